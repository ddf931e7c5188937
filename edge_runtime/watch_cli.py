"""``pneumo edge watch`` on the command line: flags and a settings file into one typed config.

Exit statuses: 0 after a clean stop (SIGTERM, SIGINT) or ``--print-config``,
1 on a fatal failure (logged by the daemon), 2 on bad settings or a bad
``PNEUMO_WATCH_FAILPOINT``, which systemd does not restart
(``deploy/pneumo-watch.service``). ``edge_runtime.cli`` reaches :func:`main`
through ``edge_runtime.watch.main``.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
from pathlib import Path

from edge_runtime.backends.base import BACKEND_CHOICES
from edge_runtime.outbox import Failpoint
from edge_runtime.systemd_notify import ServiceNotifier
from edge_runtime.watch import WatchDaemon
from edge_runtime.watch_config import WatchConfig, WatchConfigError, load_config_file, resolve_config
from edge_runtime.watch_log import json_logger

#: crash tests set it to stop the real daemon at a named step (``edge_runtime.outbox.Failpoint``)
FAILPOINT_ENV = "PNEUMO_WATCH_FAILPOINT"

EPILOG = """\
example:
  pneumo edge watch bundles/demo --inbox /srv/xray/inbox --outbox /srv/xray/outbox
  pneumo edge watch --config /etc/pneumo/watch.toml        # settings in a file, flags override it

Every input ends in OUTBOX/done/ (with NAME.json beside it) or OUTBOX/failed/
(with NAME.error.json saying why), and one line in OUTBOX/results.jsonl and
OUTBOX/results.csv. Logs are JSON lines on stderr; OUTBOX/heartbeat.json is
rewritten every few seconds. Stop with SIGTERM or Ctrl-C. To run it as a
service see deploy/WATCH.md. Results are decision support, not a diagnosis.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Watch an inbox folder and classify every complete image dropped into it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=None,
    )
    parser.add_argument(
        "bundle",
        nargs="?",
        type=Path,
        metavar="BUNDLE",
        help="deployment bundle folder (or 'bundle' in --config)",
    )
    parser.add_argument("--inbox", type=Path, metavar="DIR", help="folder images are dropped into")
    parser.add_argument(
        "--outbox", type=Path, metavar="DIR", help="folder for done/, failed/, results.jsonl, results.csv"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML or JSON settings file; flags override it"
    )
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        help="auto (default: the first that loads, in the order listed) or one backend",
    )
    parser.add_argument(
        "--precision", choices=("fp32", "fp16", "int8"), help="model precision (default fp32)"
    )
    parser.add_argument("--batch", type=int, metavar="N", help="most images per inference call (default 16)")
    parser.add_argument(
        "--quiet-seconds", type=float, metavar="S", help="size/mtime must hold still this long (default 2.0)"
    )
    parser.add_argument(
        "--poll-interval", type=float, metavar="S", help="seconds between checks without events (default 1.0)"
    )
    parser.add_argument(
        "--rescan-seconds",
        type=float,
        metavar="S",
        help="full inbox rescan interval with inotify (default 5)",
    )
    parser.add_argument(
        "--max-pending", type=int, metavar="N", help="most inputs tracked at once (default 1024)"
    )
    parser.add_argument(
        "--heartbeat", type=Path, metavar="FILE", help="heartbeat JSON file (default OUTBOX/heartbeat.json)"
    )
    parser.add_argument("--heartbeat-seconds", type=float, metavar="S", help="heartbeat interval (default 5)")
    parser.add_argument(
        "--no-watchdog",
        dest="watchdog",
        action="store_const",
        const=False,
        help="find new files by polling only, without inotify (the Python 'watchdog' package); "
        "unrelated to systemd's WatchdogSec",
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads (default: its own choice)"
    )
    parser.add_argument(
        "--dla",
        dest="dla_core",
        type=int,
        metavar="N",
        help="run the TensorRT engine built for DLA core N ('pneumo edge build --dla N')",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        metavar="S",
        help="a file that looks unfinished must hold still this long before it is failed (default 60)",
    )
    parser.add_argument(
        "--input-retries",
        type=int,
        metavar="N",
        help="tries of one input after a read or move error that may pass, before it fails (default 5)",
    )
    parser.add_argument(
        "--inbox-wait-seconds",
        type=float,
        metavar="S",
        help="a batch interrupted by a crash waits this long for a missing or unmounted inbox before "
        "inputs it cannot find are recorded as not moved (default 3600)",
    )
    parser.add_argument(
        "--inbox-mount",
        dest="inbox_mount",
        action="store_const",
        const=True,
        help="the inbox is a share mounted on the inbox folder: until it is mounted there, inputs "
        "wait and the empty folder is never read or written (inbox-mount = true in --config)",
    )
    parser.add_argument(
        "--no-inbox-mount",
        dest="inbox_mount",
        action="store_const",
        const=False,
        help="the inbox is a plain folder, whatever --config says",
    )
    parser.add_argument(
        "--low-space-mib",
        type=int,
        metavar="N",
        help="warn (outbox_low_space, heartbeat, systemctl status) when the outbox disk has less than "
        "N MiB free (default 1024; 0: never)",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default info")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved settings as JSON and exit"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> WatchConfig:
    file_values = load_config_file(args.config) if args.config else {}
    flags = {
        name: getattr(args, name)
        for name in (
            "bundle",
            "inbox",
            "outbox",
            "backend",
            "precision",
            "batch",
            "quiet_seconds",
            "poll_interval",
            "rescan_seconds",
            "max_pending",
            "heartbeat",
            "heartbeat_seconds",
            "watchdog",
            "threads",
            "dla_core",
            "settle_seconds",
            "input_retries",
            "inbox_wait_seconds",
            "inbox_mount",
            "low_space_mib",
            "log_level",
        )
    }
    return resolve_config(file_values, flags)


def quiet_opencv() -> None:
    """Silence OpenCV's own log lines (``[ WARN:0@...]`` on a truncated PNG, ``[ERROR:0@...]`` on a
    truncated BMP or TIFF): the daemon's stderr is JSON lines, and each decode failure is reported
    in its record and its ``failed_input`` line already. Text a codec library prints itself
    (``libpng error: ...``) is not OpenCV's to silence; deploy/WATCH.md reads the log with that in mind."""
    import cv2

    api = getattr(getattr(cv2, "utils", None), "logging", None)
    if api is not None:
        api.setLogLevel(api.LOG_LEVEL_SILENT)
    elif hasattr(cv2, "setLogLevel"):  # older builds: the same setting, 0 = silent
        cv2.setLogLevel(0)


def main(argv: list[str], prog: str = "pneumo edge watch") -> int:
    """Entry point of ``pneumo edge watch``: 0 after a clean stop, 1 on a fatal failure, 2 on bad settings."""
    args = build_parser(prog).parse_args(argv)
    try:
        config = config_from_args(args)
    except WatchConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)  # noqa: T201 - this is the CLI layer
        return 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))  # noqa: T201 - --print-config output
        return 0
    try:
        failpoint = Failpoint(os.environ.get(FAILPOINT_ENV, ""))
    except ValueError as exc:
        print(f"{prog}: error: {FAILPOINT_ENV}: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    logger = json_logger(config.log_level)
    quiet_opencv()
    # SIGABRT (systemd's watchdog), SIGSEGV and the like: every thread's stack on stderr, so a hang
    # or a native-library crash months into a run says where it happened
    faulthandler.enable(file=sys.stderr, all_threads=True)
    notifier = ServiceNotifier.from_environment(os.environ, os.getpid())
    try:
        return WatchDaemon(config, logger, failpoint=failpoint, notifier=notifier).run()
    finally:
        notifier.close()
