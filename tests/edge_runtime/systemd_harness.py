"""A real systemd, as PID 1 of its own namespaces, for testing the shipped unit file.

``deploy/pneumo-watch.service`` is what an operator installs; its hardening
(``ProtectSystem=strict``, ``ProtectHome``, ``PrivateTmp``, ``User=``), its
restart policy and its memory cap only mean something under a service manager.
No service manager runs on the CI machine, but systemd itself is installed, and
as root it boots in new pid, mount and cgroup namespaces:

- its cgroups are children of this process's own in every hierarchy, mounted
  afresh inside, so what it creates there is removed with it;
- ``/etc`` is an overlay, so ``useradd`` and the unit installed into
  ``/etc/systemd/system`` stay inside; ``/run``, ``/tmp``, ``/var/tmp``,
  ``/var/lib``, ``/var/log``, ``/srv`` and ``/opt`` are fresh tmpfs mounts (the
  checkout, its venv and its Python stay visible where they are, even under one
  of those);
- nothing starts but the unit under test and journald (every wanted unit and
  every generator masked), and ``/proc/sys`` and ``/sys`` are read-only;
- the checkout's virtual environment is bind-mounted at ``/opt/pneumo/venv``,
  the path the unit's ``ExecStart=`` names.

Tests reach its files through ``/proc/PID/root`` and run commands inside
with ``nsenter``. Skipped, with the reason, where any of this is refused.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

SYSTEMD = Path("/lib/systemd/systemd")
REPO = Path(__file__).resolve().parents[2]
#: the target it boots into: nothing but what a test starts
TARGET = "pneumo-test.target"
PR_SET_PDEATHSIG = 1  # prctl(2)
FRESH_TMPFS = ("/run", "/tmp", "/var/tmp", "/var/lib", "/var/log", "/srv", "/opt")
#: Nothing starts inside but the unit under test and journald: every unit another unit "wants"
#: (sysinit.target pulls in systemd-tmpfiles-setup, which empties /tmp at boot, and the like)
#: and every generator is masked, and /proc/sys and /sys are read-only, as in a container.
MASK_ALL_BUT_JOURNALD = r"""
for unit in /lib/systemd/system/*.wants/* /usr/lib/systemd/system/*.wants/* /etc/systemd/system/*.wants/* \
            /lib/systemd/system/local-fs.target /lib/systemd/system/swap.target; do
  [ -e "$unit" ] || [ -L "$unit" ] || continue
  case "${unit##*/}" in systemd-journald*) continue ;; esac
  ln -sfn /dev/null "/run/systemd/system/${unit##*/}"
done
mkdir -p /run/systemd/system-generators
for generator in /lib/systemd/system-generators/* /usr/lib/systemd/system-generators/*; do
  [ -e "$generator" ] && ln -sfn /dev/null "/run/systemd/system-generators/${generator##*/}"
done
"""


@dataclass(frozen=True)
class CgroupMount:
    """One cgroup hierarchy as /proc/self/mountinfo shows it."""

    point: str
    fstype: str  # cgroup (v1) or cgroup2
    options: str  # what ``mount -o`` needs to mount it again (v1 only)
    own: str  # this process's cgroup in it

    @property
    def own_dir(self) -> Path:
        return Path(self.point) / self.own.lstrip("/")


def cgroup_mounts() -> list[CgroupMount]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup, with this process's cgroup in it."""
    own_by_key: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, own = line.split(":", 2)
        own_by_key[controllers or "<v2>"] = own
    subsystems = {
        line.split()[0] for line in Path("/proc/cgroups").read_text().splitlines()[1:] if line.strip()
    }
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        point, fstype, super_options = fields[4], fields[sep + 1], fields[sep + 3]
        if not point.startswith("/sys/fs/cgroup") or fstype not in ("cgroup", "cgroup2"):
            continue
        if fstype == "cgroup2":
            mounts.append(CgroupMount(point, fstype, "", own_by_key.get("<v2>", "/")))
            continue
        names = [o for o in super_options.split(",") if o in subsystems or o.startswith("name=")]
        key = next((k for k in own_by_key if set(k.split(",")) == set(names)), None)
        if key is None:
            continue
        options = ",".join(names if any("=" not in n for n in names) else ["none", *names])
        mounts.append(CgroupMount(point, fstype, options, own_by_key[key]))
    return mounts


def _under(path: Path, folders: tuple[str, ...]) -> bool:
    return any(path.is_relative_to(folder) for folder in folders)


def _boot_script(mounts: list[CgroupMount], stage: Path, venv: Path, keep: list[Path]) -> str:
    """What runs as PID 1 of the new namespaces, up to the exec of systemd.

    ``keep``: folders that must stay where they are (the checkout, the venv, the Python it
    was made from) though a fresh tmpfs covers a folder above them: bound aside first, then back.
    """
    lines = [
        "set -eu",
        "mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup",
    ]
    for m in sorted(mounts, key=lambda m: m.point):
        if m.point == "/sys/fs/cgroup":  # a pure cgroup v2 machine
            lines[1] = "mount -t cgroup2 cgroup2 /sys/fs/cgroup"
            continue
        lines.append(f"mkdir -p {m.point}")
        if m.fstype == "cgroup2":
            lines.append(f"mount -t cgroup2 cgroup2 {m.point}")
        else:
            lines.append(f"mount -t cgroup -o {m.options} cgroup {m.point}")
    upper, work = stage / "etc-upper", stage / "etc-work"
    lines.append(f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc")
    # the holds live in the /etc overlay, whose upper folder is in the stage: never on the machine
    held = [
        (Path("/etc/.pneumo-hold") / str(n), path) for n, path in enumerate(keep) if _under(path, FRESH_TMPFS)
    ]
    for hold, path in held:
        lines += [
            f"mkdir -p {shlex.quote(str(hold))}",
            f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(hold))}",
        ]
    lines += [f"mount -t tmpfs -o mode=755 tmpfs {d}" for d in FRESH_TMPFS]
    for hold, path in held:
        lines += [
            f"mkdir -p {shlex.quote(str(path))}",
            f"mount --bind {shlex.quote(str(hold))} {shlex.quote(str(path))}",
        ]
    lines += [
        "chmod 1777 /tmp /var/tmp",
        "mkdir -p /opt/pneumo/venv /run/systemd/system",
        MASK_ALL_BUT_JOURNALD,
        # read-only kernel settings and devices, after the cgroup mounts below /sys are made
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys",
        "mount -o remount,bind,ro /sys",
        f"mount --bind {shlex.quote(str(venv))} /opt/pneumo/venv",
        f"printf '[Unit]\\nDescription=nothing but what a test starts\\n' > /run/systemd/system/{TARGET}",
        "export container=pneumo-test",
        f"exec {SYSTEMD} --system --unit={TARGET}",
    ]
    return "\n".join(lines) + "\n"


class SystemdNamespace:
    """systemd as PID 1 of new namespaces; :meth:`shutdown` kills it and removes its cgroups."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage
        self.name = f"pneumo-systemd-{uuid.uuid4().hex[:8]}"
        self.cgroups: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    @classmethod
    def boot(cls, stage: Path, timeout: float = 60) -> SystemdNamespace:
        for need in (SYSTEMD, Path("/usr/bin/unshare"), Path("/usr/bin/nsenter")):
            if not need.exists():
                pytest.skip(f"{need} is missing: no systemd to test the unit under")
        if os.geteuid() != 0:
            pytest.skip("booting systemd in its own namespaces needs root")
        if sys.prefix == sys.base_prefix:
            pytest.skip("not running from a virtual environment: nothing to install at /opt/pneumo/venv")
        box = cls(stage)
        try:
            box._start()
            box._wait_running(timeout)
        except BaseException:
            box.shutdown()
            raise
        return box

    def _start(self) -> None:
        mounts = cgroup_mounts()
        if not any("name=systemd" in m.options or m.fstype == "cgroup2" for m in mounts):
            pytest.skip("no name=systemd or cgroup2 hierarchy: systemd cannot boot here")
        for m in mounts:
            path = m.own_dir / self.name
            try:
                path.mkdir()
            except OSError as exc:
                pytest.skip(f"cannot create the cgroup {path}: {exc}")
            self.cgroups.append(path)
            for knob in ("cpuset.cpus", "cpuset.mems"):  # an empty cpuset admits no process
                if (path / knob).exists():
                    (path / knob).write_text((m.own_dir / knob).read_text())
        for sub in ("etc-upper", "etc-work"):
            (self.stage / sub).mkdir(parents=True)
        script = self.stage / "boot.sh"
        keep = sorted({Path(p).resolve() for p in (REPO, sys.prefix, sys.base_prefix)})
        script.write_text(_boot_script(mounts, self.stage, Path(sys.prefix), keep))
        log = open(self.stage / "boot.log", "wb")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--cgroup", "--uts", "--ipc",
             "--propagation", "private", "--mount-proc", "bash", str(script)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=self._join_cgroups, start_new_session=True,
        )  # fmt: skip
        log.close()

    def _join_cgroups(self) -> None:
        """preexec_fn: into the cgroups; and if pytest dies, unshare dies, and --kill-child takes systemd."""
        for path in self.cgroups:
            (path / "cgroup.procs").write_text(str(os.getpid()))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def _wait_running(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.skip(f"systemd did not boot in its namespaces here:\n{self.boot_log()}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids and Path(f"/proc/{pids[0]}/exe").resolve() == SYSTEMD.resolve():
                self.pid1 = int(pids[0])
                state = self.sh("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise AssertionError(f"systemd did not reach 'running' in {timeout:.0f} s:\n{self.boot_log()}")

    def boot_log(self) -> str:
        return (self.stage / "boot.log").read_text(errors="replace")

    def path(self, inside: str) -> Path:
        """A path inside the namespaces, reachable from this process."""
        return Path(f"/proc/{self.pid1}/root") / inside.lstrip("/")

    def sh(self, script: str, check: bool = True, cwd: str = "/") -> subprocess.CompletedProcess[str]:
        """Run a bash script inside (mount, pid, cgroup namespaces), as root."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-m", "-p", "-C", "bash", "-c", f"cd {shlex.quote(cwd)} && {script}"],
            capture_output=True, text=True, timeout=120,
            start_new_session=True,  # a stray 'kill 0' inside must never reach pytest's process group
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"inside the systemd namespace, exit {result.returncode}: {script}\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        status = self.sh(
            "systemctl status --no-pager -l pneumo-watch; journalctl -n 30 --no-pager -o cat", check=False
        )
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}:\n{status.stdout}{status.stderr}"
        )

    def shutdown(self) -> None:
        """Stop the units (the daemon exits cleanly), kill PID 1, remove the cgroups it made."""
        if self.proc is not None and self.proc.poll() is None:
            if self.pid1:
                try:
                    self.sh("systemctl stop '*.service'", check=False)
                except subprocess.TimeoutExpired:
                    pass  # killed below all the same
                try:
                    os.kill(self.pid1, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait(timeout=30)
        for top in self.cgroups:
            for _ in range(50):  # the last processes may still be exiting
                try:
                    for sub in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
                        if sub.is_dir():
                            sub.rmdir()
                    top.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
