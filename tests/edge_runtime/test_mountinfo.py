"""The mount table reader behind the daemon's start-up advice on inbox shares.

Real mounts where this machine allows them (a tmpfs at a path with a space, which the kernel
escapes); the network cases from mountinfo lines as the kernel writes them for CIFS and NFS,
since no such server is reachable from a test.
"""

from __future__ import annotations

from pathlib import Path

from edge_runtime.mountinfo import MountEntry, mount_of, parse_mountinfo, read_mount_of, share_advice
from tests.edge_runtime.watch_harness import mount, umount

# Two lines of a Jetson's /proc/self/mountinfo with an SMB share and an NFS export mounted.
NETWORK_TABLE = (
    "23 1 179:1 / / rw,relatime shared:1 - ext4 /dev/mmcblk0p1 rw\n"
    "88 23 0:52 / /srv/xray rw,relatime shared:40 - cifs //pacs.local/x\\040rays rw,vers=3.1.1,uid=998\n"
    "91 23 0:55 / /mnt/nfs\\040in rw,relatime shared:42 - nfs4 nas:/export/inbox rw,vers=4.2\n"
    "malformed line without the separator\n"
)


def test_parse_reads_the_fields_and_undoes_the_kernels_escapes() -> None:
    entries = parse_mountinfo(NETWORK_TABLE)
    assert [(e.mount_point, e.fstype, e.source) for e in entries] == [
        (Path("/"), "ext4", "/dev/mmcblk0p1"),
        (Path("/srv/xray"), "cifs", "//pacs.local/x rays"),
        (Path("/mnt/nfs in"), "nfs4", "nas:/export/inbox"),
    ]
    assert [e.is_network for e in entries] == [False, True, True]


def test_mount_of_is_the_deepest_mount_point_and_the_latest_mounted_there() -> None:
    entries = parse_mountinfo(NETWORK_TABLE)
    assert mount_of(Path("/srv/xray/inbox"), entries) == entries[1]
    assert mount_of(Path("/srv/xray"), entries) == entries[1]
    assert mount_of(Path("/srv/xraying"), entries) == entries[0]  # a prefix of the name is not a parent
    # autofs first, the share mounted over it on first access: the share holds the path
    stacked = parse_mountinfo(
        "23 1 179:1 / / rw - ext4 /dev/root rw\n"
        "60 23 0:40 / /srv/xray/inbox rw - autofs systemd-1 rw\n"
        "61 60 0:53 / /srv/xray/inbox rw - cifs //pacs/inbox rw\n"
    )
    assert mount_of(Path("/srv/xray/inbox"), stacked) == stacked[2]


def test_share_advice_names_what_to_change() -> None:
    inbox = Path("/srv/xray/inbox")
    above = MountEntry(Path("/srv/xray"), "cifs", "//pacs/x")
    on_inbox = MountEntry(inbox, "nfs4", "nas:/inbox")
    local = MountEntry(Path("/"), "ext4", "/dev/root")
    advice = share_advice(inbox, above, inbox_mount=True)
    assert advice and "mounted on /srv/xray, not on the inbox folder itself" in advice
    assert "bare mount point" in advice and "inbox-mount = true" in advice
    advice = share_advice(inbox, on_inbox, inbox_mount=False)
    assert advice and "set inbox-mount = true" in advice and "nas:/inbox" in advice
    assert share_advice(inbox, on_inbox, inbox_mount=True) is None
    assert share_advice(inbox, local, inbox_mount=False) is None
    assert share_advice(inbox, None, inbox_mount=False) is None


def test_read_mount_of_finds_a_real_mount_at_a_path_with_a_space(tmp_path: Path, can_mount: None) -> None:
    point = tmp_path / "x ray share"
    point.mkdir()
    result = mount("-t", "tmpfs", "-o", "size=1m", "pneumo test", str(point))
    assert result.returncode == 0, result.stderr
    try:
        (point / "inbox").mkdir()
        held = read_mount_of(point / "inbox")
        assert held is not None
        assert (held.mount_point, held.fstype, held.source) == (point, "tmpfs", "pneumo test")
        assert not held.is_network and share_advice(point / "inbox", held, inbox_mount=False) is None
    finally:
        umount(point)
    outside = read_mount_of(tmp_path)
    assert outside is not None and outside.mount_point != point
