"""The shipped unit file under a real systemd, installed the way deploy/WATCH.md tells an operator.

systemd runs as PID 1 of its own namespaces (tests/edge_runtime/systemd_harness.py), so
``useradd``, the unit in ``/etc/systemd/system`` and the folders under ``/srv`` stay there.
The commands of WATCH.md sections 2 and 5 are read from the file and run as written (without
``sudo``); what a test changes is said where it does. Each test boots its own systemd, and
skips, with the reason, where this machine refuses it (not root, no systemd, no cgroups).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.edge_runtime.systemd_harness import SystemdNamespace
from tests.edge_runtime.watch_harness import (
    BRIGHT,
    DARK,
    REPO,
    assert_exactly_once,
    png_bytes,
)

UNIT = "pneumo-watch"
WATCH_MD = REPO / "deploy" / "WATCH.md"
#: WATCH.md's paths, which the unit's ReadWritePaths= and the settings below assume
INBOX, OUTBOX, HEARTBEAT = "/srv/xray/inbox", "/srv/xray/outbox", "/run/pneumo-watch/heartbeat.json"
BUNDLE = "/opt/pneumo/bundles/current"
#: the unit's RestartSec=, waited out to see whether a restart follows
RESTART_SEC = 10


def watch_md_commands(section: str) -> list[str]:
    """The ``sudo`` lines of the first bash block of a WATCH.md section, without ``sudo``."""
    text = WATCH_MD.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block, f"{WATCH_MD}: no bash block in section {section!r}"
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [line.removeprefix("sudo ") for line in lines if line.startswith("sudo ")]


def settings(**extra: object) -> str:
    """/etc/pneumo/watch.toml: WATCH.md's paths, and fast waits so the test does not sit idle."""
    values: dict[str, object] = {
        "bundle": BUNDLE,
        "inbox": INBOX,
        "outbox": OUTBOX,
        "heartbeat": HEARTBEAT,
        "quiet-seconds": 0.3,
        "poll-interval": 0.2,
        "heartbeat-seconds": 0.5,
        **extra,
    }
    return "[watch]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def python_drop_in() -> str:
    """The drop-in WATCH.md gives for a Python installed under /root or /home, and where this checkout is.

    ``ProtectHome=yes`` hides those folders from the service, and with them an interpreter
    installed there (pyenv), so the venv cannot start (status 203/EXEC). A Jetson's venv on
    the system Python needs none of this; this machine's Python lives under /root. The venv
    bound at /opt/pneumo/venv still runs the checkout's files where they are (its scripts name
    their interpreter by its path), which ``PrivateTmp=yes`` hides too if that is under /tmp.
    """
    lines = []
    python = Path(sys.base_prefix).resolve()
    if python.is_relative_to("/root") or python.is_relative_to("/home"):
        lines += ["ProtectHome=tmpfs", f"BindReadOnlyPaths={python}"]
    for path in sorted({REPO.resolve(), Path(sys.prefix).resolve()}):
        if any(path.is_relative_to(hidden) for hidden in ("/tmp", "/var/tmp", "/root", "/home")):
            lines.append(f"BindReadOnlyPaths={path}")
    return "[Service]\n" + "".join(f"{line}\n" for line in lines) if lines else ""


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[SystemdNamespace]:
    box = SystemdNamespace.boot(tmp_path / "systemd")
    try:
        yield box
    finally:
        box.shutdown()


def install(box: SystemdNamespace, bundle: Path, config: str, drop_in: str = "") -> None:
    """WATCH.md sections 2 to 5, in order: user and folders, bundle, settings, service."""
    box.sh(" && ".join(watch_md_commands("2. A user and the folders")))
    shutil.copytree(bundle, box.path(BUNDLE))  # section 3, with the test's bundle
    box.path("/etc/pneumo").mkdir()
    box.path("/etc/pneumo/watch.toml").write_text(config)  # section 4
    drop_in = python_drop_in() + drop_in
    if drop_in:
        folder = box.path(f"/etc/systemd/system/{UNIT}.service.d")
        folder.mkdir(parents=True)
        (folder / "test.conf").write_text(drop_in)
    box.sh(" && ".join(watch_md_commands("5. The service")), check=False, cwd=str(REPO))


def state(box: SystemdNamespace) -> dict[str, str]:
    return box.show(
        UNIT, "ActiveState", "SubState", "Result", "MainPID", "NRestarts", "ExecMainStatus", "StatusText"
    )


def daemon_lines(box: SystemdNamespace) -> list[dict[str, object]]:
    """The daemon's own journal lines, as WATCH.md reads them (``journalctl -t``): JSON, each one."""
    out = box.sh(f"journalctl -t {UNIT} -o cat --no-pager").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def outbox(box: SystemdNamespace) -> Path:
    return box.path(OUTBOX)


def deliver(box: SystemdNamespace, name: str, data: bytes) -> None:
    """Write beside the inbox, then rename in (WATCH.md section 6), as root of the xray group would."""
    staging = box.path("/srv/xray/staging")
    staging.mkdir(exist_ok=True)
    (staging / name).write_bytes(data)
    (staging / name).rename(box.path(INBOX) / name)


def results(box: SystemdNamespace) -> int:
    path = outbox(box) / "results.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_the_unit_installed_as_watch_md_says_runs_hardened_restarts_after_a_kill_and_stops_for_good(
    systemd: SystemdNamespace, tiny_bundle: Path
) -> None:
    box = systemd
    install(box, tiny_bundle, settings())
    # Type=notify: 'enable --now' returned once the daemon said READY, after its model loaded
    first = state(box)
    assert first["ActiveState"] == "active", box.sh(f"systemctl status {UNIT} --no-pager", check=False).stdout
    assert [e["event"] for e in daemon_lines(box)][:2] == ["starting", "started"]
    box.wait_for("the status line", lambda: state(box)["StatusText"].startswith("running: 0 done"))

    # the hardening is in force on the running process, not only written in the file
    pid = first["MainPID"]
    status = box.sh(f"cat /proc/{pid}/status").stdout
    uid = box.sh("id -u pneumo").stdout.strip()
    assert re.search(rf"^Uid:\s+{uid}\s", status, re.M) and re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    root_mount = next(
        line.split()
        for line in box.sh(f"cat /proc/{pid}/mountinfo").stdout.splitlines()
        if line.split()[4] == "/"
    )
    assert "ro" in root_mount[5].split(","), root_mount  # ProtectSystem=strict
    cgroup = box.sh(f"cat /proc/{pid}/cgroup").stdout
    memory = re.search(r"^\d+:memory:(.*)$", cgroup, re.M)
    if memory:  # cgroup v1: MemoryMax= becomes the hierarchy's hard limit
        limit = box.sh(f"cat /sys/fs/cgroup/memory{memory.group(1)}/memory.limit_in_bytes").stdout
        assert int(limit) == 2 << 30
    else:
        unified = re.search(r"^0::(.*)$", cgroup, re.M)
        assert unified, cgroup
        assert box.sh(f"cat /sys/fs/cgroup{unified.group(1)}/memory.max").stdout.strip() == str(2 << 30)

    # WATCH.md's smoke test, as written
    smoke = box.path("/opt/smoke")
    smoke.mkdir()
    (smoke / "chest.png").write_bytes(png_bytes(BRIGHT, seed=0))
    smoke_block = re.search(r"Smoke test.*?```bash\n(.*?)```", WATCH_MD.read_text(), re.S)
    assert smoke_block
    box.sh(smoke_block.group(1), cwd="/opt/smoke")
    box.wait_for("the smoke test's result", lambda: (outbox(box) / "done" / "chest.png.json").exists())
    record = json.loads((outbox(box) / "done" / "chest.png.json").read_text())
    assert record["label"] == "PNEUMONIA" and record["model_version"] == "tiny-test-1"
    assert record["threshold"] == 0.5 and 0.5 < record["probability"] <= 1 and record["synthetic"] is True
    box.wait_for("the status line", lambda: state(box)["StatusText"].startswith("running: 1 done, 0 failed"))

    def beat_says_one_done() -> bool:  # RuntimeDirectory=, rewritten every heartbeat-seconds
        beat = json.loads(box.path(HEARTBEAT).read_text())
        return beat["state"] == "running" and beat["counters"]["processed"] == 1

    box.wait_for("the heartbeat", beat_says_one_done)

    # SIGHUP (a stray 'systemctl reload' or kill -HUP) is logged and changes nothing
    box.sh(f"systemctl kill -s HUP {UNIT}")
    box.wait_for("hangup_ignored", lambda: any(e["event"] == "hangup_ignored" for e in daemon_lines(box)))
    assert state(box)["MainPID"] == pid and state(box)["NRestarts"] == "0"

    # kill -9 with a batch delivered: systemd restarts it after RestartSec, and the journal
    # replay gives every image exactly one result
    inputs = {"chest.png": png_bytes(BRIGHT, seed=0)}
    for n in range(6):
        inputs[f"later-{n}.png"] = png_bytes(DARK if n % 2 else BRIGHT, seed=100 + n)
        deliver(box, f"later-{n}.png", inputs[f"later-{n}.png"])
    box.sh(f"systemctl kill -s KILL {UNIT}")
    box.wait_for(
        "the restart",
        lambda: state(box)["NRestarts"] == "1" and state(box)["ActiveState"] == "active",
        timeout=RESTART_SEC + 60,
    )
    box.wait_for("every result", lambda: results(box) == len(inputs), timeout=60)
    assert state(box)["MainPID"] != pid
    assert_exactly_once(outbox(box), inputs)

    # 'systemctl stop': SIGTERM, a clean exit, and no restart after RestartSec
    box.sh(f"systemctl stop {UNIT}")
    stopped = state(box)
    assert (stopped["ActiveState"], stopped["Result"], stopped["ExecMainStatus"]) == (
        "inactive",
        "success",
        "0",
    )
    assert daemon_lines(box)[-1]["event"] == "stopped"
    time.sleep(RESTART_SEC + 2)
    later = state(box)
    assert (later["ActiveState"], later["MainPID"], later["NRestarts"]) == (
        "inactive",
        "0",
        stopped["NRestarts"],
    )
    assert sorted(p.name for p in box.path(INBOX).iterdir()) == [".pneumo-inbox.lock"]


def test_a_hung_daemon_is_killed_by_the_watchdog_with_its_stacks_in_the_journal_and_restarted(
    systemd: SystemdNamespace, tiny_bundle: Path
) -> None:
    box = systemd
    # the shipped WatchdogSec=180 made short, so the test waits seconds, not minutes
    install(box, tiny_bundle, settings(), drop_in="[Service]\nWatchdogSec=3\n")
    pid = state(box)["MainPID"]
    time.sleep(4)  # longer than WatchdogSec: a daemon that is only idle keeps calling in
    idle = state(box)
    assert (idle["ActiveState"], idle["Result"], idle["MainPID"]) == ("active", "success", pid), idle
    box.sh(f"systemctl kill -s STOP --kill-whom=main {UNIT}")  # the main loop stops, as in a deadlock
    inputs = {f"while-hung-{n}.png": png_bytes(BRIGHT, seed=200 + n) for n in range(3)}
    for name, data in inputs.items():
        deliver(box, name, data)
    box.wait_for(
        "the watchdog's restart",
        lambda: state(box)["NRestarts"] == "1" and state(box)["ActiveState"] == "active",
        timeout=RESTART_SEC + 60,
    )
    box.wait_for("every result", lambda: results(box) == len(inputs), timeout=60)
    assert_exactly_once(outbox(box), inputs)
    assert state(box)["MainPID"] != pid
    journal = box.sh(f"journalctl -u {UNIT} -o cat --no-pager").stdout
    assert "Watchdog timeout" in journal, journal[-2000:]
    # faulthandler: SIGABRT from the watchdog prints where every thread was
    assert "Fatal Python error: Aborted" in journal and "most recent call first" in journal, journal[-3000:]


def test_bad_settings_stop_the_service_without_a_restart_loop(
    systemd: SystemdNamespace, tiny_bundle: Path
) -> None:
    box = systemd
    install(box, tiny_bundle, settings(**{"quiet-secnds": 1.0}))
    box.wait_for("the failure", lambda: state(box)["ActiveState"] == "failed")
    failed = state(box)
    assert (failed["Result"], failed["ExecMainStatus"]) == ("exit-code", "2")
    journal = box.sh(f"journalctl -u {UNIT} -o cat --no-pager").stdout
    assert "unknown settings ['quiet_secnds']" in journal, journal
    time.sleep(RESTART_SEC + 2)  # RestartPreventExitStatus=2: no restart to wait out
    assert state(box)["ActiveState"] == "failed" and state(box)["NRestarts"] == "0"
