"""Settings of the folder-watch daemon: one typed record, a TOML/JSON file, and flags on top.

Precedence is defaults < config file < command-line flags. A config file
holds the same names as :class:`WatchConfig` (``snake_case`` or
``kebab-case``), either at the top level or under a ``[watch]`` table::

    # /etc/pneumo/watch.toml
    [watch]
    bundle = "/opt/pneumo/bundles/current"
    inbox = "/srv/xray/inbox"
    outbox = "/srv/xray/outbox"
    batch = 16
    quiet-seconds = 2.0

Relative paths in a file are relative to the file's folder, so a config can
travel with its bundle; relative paths given as flags are relative to the
working directory. Either way they are made absolute here, so the journal,
``watch_config.json`` and the logs always name absolute paths. Unknown keys
are an error, never silently ignored.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edge_runtime.backends.base import BACKEND_CHOICES, BACKEND_NAMES
from edge_runtime.errors import EdgeError

# Names an uploader uses while a file is still being written, and hidden
# files (editors, macOS ".DS_Store", the daemon's own lock and quarantine).
DEFAULT_IGNORE = (".*", "*.part", "*.partial", "*.tmp", "*.temp", "*.crdownload", "*.download", "*.swp", "*~")
PRECISIONS = ("fp32", "fp16", "int8")
LOG_LEVELS = ("debug", "info", "warning", "error")
HEARTBEAT_FILE = "heartbeat.json"


class WatchConfigError(EdgeError):
    """The daemon's settings are missing, malformed or out of bounds."""


@dataclass(frozen=True)
class WatchConfig:
    """Everything ``pneumo edge watch`` needs; validated on construction."""

    bundle: Path
    inbox: Path
    outbox: Path
    backend: str = "auto"
    precision: str = "fp32"
    #: most images per inference call; smaller batches are run when the inbox is quiet
    batch: int = 16
    #: a file found by a scan is complete once size and mtime held still this long
    quiet_seconds: float = 2.0
    #: how often the loop wakes without events (and the scan interval without inotify); it also
    #: wakes at least every heartbeat_seconds (and half systemd's WatchdogSec) to say it lives
    poll_interval: float = 1.0
    #: full rescans even with inotify, so dropped events and network shares are covered
    rescan_seconds: float = 5.0
    #: bound on inputs tracked at once; discovery pauses while it is full (backpressure)
    max_pending: int = 1024
    #: heartbeat file; default OUTBOX/heartbeat.json
    heartbeat: Path | None = None
    heartbeat_seconds: float = 5.0
    #: use inotify through watchdog (falls back to polling when it cannot start)
    watchdog: bool = True
    #: treat inotify close_write as "complete"; turn off for writers that reopen files
    trust_close_write: bool = True
    #: a file that looks unfinished (created and not closed, or truncated/corrupt without a
    #: "complete" signal) must hold still this long before it is read as final or failed
    settle_seconds: float = 60.0
    #: tries of one input after a read error that may pass (EIO, ESTALE) or a failed move
    #: (immutable or locked file) before it is given up as failed
    input_retries: int = 5
    #: a batch a crash left claimed waits this long for its inbox to come back (a share not yet
    #: mounted after a reboot) before inputs it cannot find are recorded as not moved
    inbox_wait_seconds: float = 3600.0
    #: the inbox is a share mounted on the inbox folder: the folder is not the inbox until a
    #: filesystem is mounted on it (a daemon started before the share waits instead of reading
    #: the empty mount point)
    inbox_mount: bool = False
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    #: glob patterns of inbox names never touched
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    #: warn (outbox_low_space, the heartbeat, systemctl status) once the outbox disk has less than
    #: this many MiB free; every input is kept in done/ or failed/, so a disk nobody archives fills
    low_space_mib: int = 1024
    #: ONNX Runtime intra-op threads (0: its default)
    threads: int = 0
    #: run the TensorRT engine built for this DLA core ('pneumo edge build --dla N')
    dla_core: int | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in ("bundle", "inbox", "outbox", "heartbeat"):
            value = getattr(self, name)
            if value is not None:
                # absolute: the journal and watch_config.json must not depend on the working directory
                object.__setattr__(self, name, _absolute(Path(value)))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        _check_int("batch", self.batch, 1, 1024)
        _check_int("max_pending", self.max_pending, 1, 1_000_000)
        _check_int("threads", self.threads, 0, 256)
        _check_int("input_retries", self.input_retries, 1, 1000)
        _check_int("low_space_mib", self.low_space_mib, 0, 100_000_000)
        for name in ("watchdog", "trust_close_write", "inbox_mount"):
            _check_bool(name, getattr(self, name))
        if self.dla_core is not None:
            _check_int("dla_core", self.dla_core, 0, 15)
        _check_float("settle_seconds", self.settle_seconds, 0.0, 86400.0)
        _check_float("inbox_wait_seconds", self.inbox_wait_seconds, 0.0, 30 * 86400.0)
        _check_float("quiet_seconds", self.quiet_seconds, 0.0, 3600.0)
        _check_float("poll_interval", self.poll_interval, 0.01, 600.0)
        _check_float("rescan_seconds", self.rescan_seconds, 0.01, 86400.0)
        _check_float("heartbeat_seconds", self.heartbeat_seconds, 0.1, 3600.0)
        _check_float("backoff_initial_seconds", self.backoff_initial_seconds, 0.01, 3600.0)
        _check_float("backoff_max_seconds", self.backoff_max_seconds, self.backoff_initial_seconds, 86400.0)
        if self.max_pending < self.batch:
            raise WatchConfigError(f"max_pending {self.max_pending} must be at least batch {self.batch}")
        if self.backend not in BACKEND_CHOICES:
            # here, not at model load: a typo must exit 2 ("fix the config"), not loop through restarts
            raise WatchConfigError(
                f"backend {self.backend!r}: expected auto or one of {', '.join(BACKEND_NAMES)}"
            )
        if self.precision not in PRECISIONS:
            raise WatchConfigError(f"precision {self.precision!r}: expected one of {PRECISIONS}")
        if self.log_level not in LOG_LEVELS:
            raise WatchConfigError(f"log_level {self.log_level!r}: expected one of {LOG_LEVELS}")
        if not all(isinstance(p, str) and p for p in self.ignore):
            raise WatchConfigError(f"ignore must be a list of glob patterns, got {self.ignore!r}")
        inbox, outbox = _absolute(self.inbox), _absolute(self.outbox)
        if inbox == outbox or outbox.is_relative_to(inbox):
            raise WatchConfigError(
                f"outbox {self.outbox} must not be the inbox or inside it (results would be read back as inputs)"
            )
        if inbox.is_relative_to(outbox):
            raise WatchConfigError(f"inbox {self.inbox} must not be inside the outbox {self.outbox}")
        if self.heartbeat_path.is_relative_to(inbox):
            raise WatchConfigError(
                f"heartbeat {self.heartbeat_path} must not be inside the inbox {self.inbox} (the daemon "
                "would read its own heartbeat as an input, again and again); put it in the outbox "
                "(the default) or under /run"
            )

    @property
    def heartbeat_path(self) -> Path:
        return self.heartbeat if self.heartbeat is not None else self.outbox / HEARTBEAT_FILE

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("bundle", "inbox", "outbox"):
            data[name] = str(data[name])
        data["heartbeat"] = str(self.heartbeat_path)
        data["ignore"] = list(self.ignore)
        return data


def _absolute(path: Path) -> Path:
    return Path(path).expanduser().absolute()


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise WatchConfigError(f"{name} = {value!r}: expected a whole number within {low}..{high}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise WatchConfigError(f"{name} = {value!r}: expected true or false")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WatchConfigError(f"{name} = {value!r}: expected a number of seconds")
    if not (math.isfinite(value) and low <= value <= high):
        raise WatchConfigError(f"{name} = {value!r}: expected {low:g}..{high:g}")


def field_names() -> list[str]:
    return [f.name for f in fields(WatchConfig)]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.toml`` or ``.json`` config into WatchConfig keyword values (relative paths resolved)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WatchConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WatchConfigError(f"{path}: not valid JSON ({exc})") from exc
    elif path.suffix.lower() == ".toml":
        data = _parse_toml(path, raw)
    else:
        raise WatchConfigError(f"{path}: config file must end in .toml or .json")
    if not isinstance(data, dict):
        raise WatchConfigError(f"{path}: config must be a table/object of settings")
    if "watch" in data and isinstance(data["watch"], dict):
        outer = sorted(set(data) - {"watch"})
        if outer:
            raise WatchConfigError(f"{path}: keys {outer} are outside the [watch] table")
        data = data["watch"]
    values = normalise_keys(data, str(path))
    for name in ("bundle", "inbox", "outbox", "heartbeat"):
        if name in values:
            if not isinstance(values[name], str) or not values[name]:
                raise WatchConfigError(f"{path}: {name} must be a path string")
            values[name] = (path.parent / Path(values[name]).expanduser()).absolute()
    if "ignore" in values:
        if not isinstance(values["ignore"], list):
            raise WatchConfigError(f"{path}: ignore must be a list of glob patterns")
        values["ignore"] = tuple(values["ignore"])
    return values


def _parse_toml(path: Path, raw: bytes) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # JetPack 6 ships Python 3.10, which has no tomllib
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise WatchConfigError(
                f"{path}: reading TOML on Python 3.10 needs 'pip install tomli'; or write the config as JSON"
            ) from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WatchConfigError(f"{path}: not valid TOML ({exc})") from exc


def normalise_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    """kebab-case -> snake_case; unknown keys are an error naming the known ones."""
    known = set(field_names())
    values = {str(key).replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise WatchConfigError(f"{source}: unknown settings {unknown}; known: {sorted(known)}")
    return values


def resolve_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> WatchConfig:
    """Defaults < config file < flags. ``flag_values`` holds only flags actually given."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    missing = [
        f.name
        for f in fields(WatchConfig)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in merged
    ]
    if missing:
        raise WatchConfigError(
            f"missing {', '.join(missing)}: give them as arguments (BUNDLE --inbox DIR --outbox DIR) or in --config"
        )
    try:
        return WatchConfig(**merged)
    except TypeError as exc:
        raise WatchConfigError(str(exc)) from exc
