"""Which filesystem holds the inbox, read from the kernel's mount table (``/proc/self/mountinfo``).

The watch daemon uses it once at start to tell the operator when the inbox is a network
share set up in a way the daemon cannot fully protect: a share mounted on a folder *above*
the inbox (while it is not mounted, a folder of the inbox's name on the bare mount point
would be taken for the inbox), or a share mounted on the inbox without
``inbox-mount = true`` (a restart before the share is mounted would take the empty folder
for the inbox). :func:`edge_runtime.outbox.mount_point_of` also uses it, to recognise a
share mounted above the inbox when it comes back under a new device number. Linux only;
elsewhere there is no advice, never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

# Filesystems whose server can go away while this machine runs (and come back under a new
# device number after a reboot): the cases deploy/WATCH.md section 2 describes.
NETWORK_FILESYSTEMS = frozenset(
    {
        "cifs",
        "smb3",
        "smbfs",
        "nfs",
        "nfs4",
        "ceph",
        "glusterfs",
        "9p",
        "afs",
        "davfs",
        "fuse.sshfs",
        "fuse.rclone",
        "fuse.glusterfs",
        "fuse.davfs2",
    }
)


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: where a filesystem is mounted, its type and what it mounts."""

    mount_point: Path
    fstype: str
    source: str

    @property
    def is_network(self) -> bool:
        return self.fstype in NETWORK_FILESYSTEMS


def _unescape(field: str) -> str:
    # the kernel writes space, tab, newline and backslash in paths as 3-digit octal escapes
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a mountinfo text, in the kernel's order (later mounts last).

    A line is ``ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER``;
    malformed lines are skipped (the table is advice, not a contract).
    """
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
            mount_point, fstype, source = fields[4], fields[dash + 1], fields[dash + 2]
        except (ValueError, IndexError):
            continue
        entries.append(MountEntry(Path(_unescape(mount_point)), _unescape(fstype), _unescape(source)))
    return entries


def mount_of(path: Path, entries: list[MountEntry]) -> MountEntry | None:
    """The mount that holds ``path``: the deepest mount point above it, the latest one mounted there."""
    best: MountEntry | None = None
    for entry in entries:
        holds = path == entry.mount_point or path.is_relative_to(entry.mount_point)
        if holds and (best is None or len(entry.mount_point.parts) >= len(best.mount_point.parts)):
            best = entry
    return best


def read_mount_of(path: Path) -> MountEntry | None:
    """The mount holding ``path`` on this machine; None where there is no mount table or no path."""
    try:
        text = MOUNTINFO.read_text(encoding="utf-8", errors="surrogateescape")
        real = Path(os.path.realpath(path))
    except OSError:
        return None
    return mount_of(real, parse_mountinfo(text))


def share_advice(inbox: Path, entry: MountEntry | None, inbox_mount: bool) -> str | None:
    """What the operator should change about how the inbox share is mounted; None when nothing."""
    if entry is None or not entry.is_network:
        return None
    where = f"the {entry.fstype} share {entry.source}"
    if entry.mount_point != inbox:
        return (
            f"inbox {inbox} lies inside {where}, mounted on {entry.mount_point}, not on the inbox folder "
            "itself: while the share is not mounted (a start before the network is up, a share that "
            "dropped away) a folder of that name on the bare mount point would be taken for the inbox; "
            "mount the share on the inbox folder and set inbox-mount = true (deploy/WATCH.md, section 2)"
        )
    if not inbox_mount:
        return (
            f"inbox {inbox} is {where}, mounted on the inbox folder: set inbox-mount = true, so that a "
            "restart before the share is mounted waits for it instead of taking the empty folder for "
            "the inbox (deploy/WATCH.md, section 2)"
        )
    return None
