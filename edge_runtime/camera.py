"""Live inference on a camera or video stream with OpenCV capture.

Capture back-ends, and the trap behind each:

* USB cameras go through V4L2, which every Linux OpenCV build has.
* A Jetson CSI camera (``csi://0``) is only reachable through a GStreamer
  pipeline (``nvarguscamerasrc ! ... ! appsink``), and the OpenCV wheels on the
  package index are built *without* GStreamer: ``cv2.VideoCapture`` then
  returns an unopened capture or blank frames with no error. So the build
  information is checked first and a CSI source on such an OpenCV fails with
  that explanation (JetPack's own OpenCV has GStreamer: use a venv made with
  ``--system-site-packages``; see deploy/JETSON.md).
* ``opencv-python-headless`` has no GUI (``GUI: NONE``), so ``imshow`` cannot
  open a window; that is detected and reported unless ``--headless`` is asked.

Per frame the loop times three stages (capture, preprocess, infer), appends one
JSON line to ``--jsonl`` (fsynced, through the watch daemon's
:class:`~edge_runtime.results.AppendLog`) and a PNG snapshot every N seconds, and stops
cleanly when the ``stop`` event is set (the CLI sets it on Ctrl-C and SIGTERM),
at the end of a file, or after ``max_frames``.

The outputs never change a file that is not the camera's own (:func:`check_outputs`): a
``--jsonl`` that is the source video, an existing file that does not read as JSON lines, or
an output inside a bundle folder (whose manifest would then list a file too few) is refused
before anything is written. Snapshots are new files named after the run
(``snapshot_<UTC start>-<random>_<frame>.png``) and never replace one, so the JSONL lines of
earlier runs keep pointing at the images they were written with.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from typing import Any

import numpy as np

from edge_runtime.bundle import MANIFEST_FILE
from edge_runtime.contract import MODEL_INFO_FILE, SYNTHETIC_WARNING, PreprocessContract
from edge_runtime.device import opencv_capture_backends, opencv_has_gui
from edge_runtime.errors import CameraError
from edge_runtime.fileio import fsync_dir
from edge_runtime.predictor import Prediction, Predictor
from edge_runtime.preprocess import apply_contract
from edge_runtime.results import AppendLog, place_new
from edge_runtime.sources import CameraSource

FLIP_METHODS = range(8)  # nvvidconv flip-method: 0 none, 2 rotate 180, 4 horizontal, 6 vertical, ...
STAGES = ("capture", "preprocess", "infer")
#: How much of an existing --jsonl is read to tell a JSON-lines log from another file: at most this
#: many bytes at its start and at its end (one camera or watch record is well under 4 KiB).
LOG_CHECK_BYTES = 1 << 20


@dataclass(frozen=True)
class CameraConfig:
    """One camera run, from ``pneumo edge camera`` flags."""

    source: str
    width: int = 1280
    height: int = 720
    fps: int = 30
    flip: int = 0
    headless: bool = False
    jsonl: Path | None = None
    snapshot_every_s: float = 0.0
    snapshot_dir: Path | None = None
    max_frames: int = 0
    realtime: bool = False
    window_title: str = "pneumo-edge"

    def __post_init__(self) -> None:
        if not (16 <= self.width <= 8192 and 16 <= self.height <= 8192):
            raise CameraError(f"--width/--height {self.width}x{self.height} is outside 16..8192")
        if not 1 <= self.fps <= 240:
            raise CameraError(f"--fps {self.fps} is outside 1..240")
        if self.flip not in FLIP_METHODS:
            raise CameraError(f"--flip {self.flip}: nvvidconv flip-method is 0..7")
        if self.snapshot_every_s < 0 or self.max_frames < 0:
            raise CameraError("--snapshot-every and --max-frames must not be negative")
        if self.headless and self.jsonl is None:
            raise CameraError("--headless needs --jsonl OUT.jsonl: the per-frame results go there")

    @property
    def snapshots(self) -> Path | None:
        if self.snapshot_every_s <= 0:
            return None
        if self.snapshot_dir is not None:
            return self.snapshot_dir
        return (self.jsonl.parent if self.jsonl is not None else Path(".")) / "snapshots"


def csi_pipeline(sensor_id: int, width: int, height: int, fps: int, flip: int = 0) -> str:
    """GStreamer pipeline for a Jetson CSI camera, ending in an appsink OpenCV reads BGR from.

    nvarguscamerasrc delivers NV12 in NVMM (GPU) memory; nvvidconv converts and
    flips on the VIC, videoconvert makes BGR, and the appsink keeps only the
    newest frame so a slow model never works on stale frames.
    """
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
        f"framerate=(fraction){fps}/1, format=(string)NV12 ! "
        f"nvvidconv flip-method={flip} ! "
        f"video/x-raw, width=(int){width}, height=(int){height}, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


def no_gstreamer_message(source: CameraSource) -> str:
    import cv2

    return (
        f"{source.target}: a CSI camera needs OpenCV built with GStreamer (nvarguscamerasrc), and this "
        f"OpenCV {cv2.__version__} has GStreamer: NO (the opencv-python wheels from the package index are "
        "built without it; 'pneumo edge doctor' shows the capture back-ends). On a Jetson use JetPack's "
        "OpenCV: create the venv with 'python3 -m venv --system-site-packages' and remove the pip OpenCV "
        "from it (deploy/JETSON.md). USB cameras work through V4L2 either way: --source /dev/video0"
    )


def open_capture(source: CameraSource, config: CameraConfig, build_info: str | None = None) -> Any:
    """An opened ``cv2.VideoCapture`` for ``source``, or a CameraError saying why not."""
    import cv2

    backends = opencv_capture_backends(build_info if build_info is not None else cv2.getBuildInformation())
    if source.kind == "csi":
        if not backends["gstreamer"]:
            raise CameraError(no_gstreamer_message(source))
        assert source.index is not None
        pipeline = csi_pipeline(source.index, config.width, config.height, config.fps, config.flip)
        capture = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    elif source.kind == "v4l2":
        api = cv2.CAP_V4L2 if backends["v4l2"] else cv2.CAP_ANY
        capture = cv2.VideoCapture(source.index if source.index is not None else source.target, api)
        if capture.isOpened():
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
            capture.set(cv2.CAP_PROP_FPS, config.fps)
    elif source.kind == "network":
        capture = cv2.VideoCapture(source.target, cv2.CAP_FFMPEG if backends["ffmpeg"] else cv2.CAP_ANY)
    else:
        capture = cv2.VideoCapture(source.target)
    if not capture.isOpened():
        have = ", ".join(name for name, ok in backends.items() if ok) or "none"
        raise CameraError(
            f"could not open {source.describe()} (this OpenCV's capture back-ends: {have}); "
            "check the device exists and is not in use ('pneumo edge doctor' lists cameras)"
        )
    return capture


@dataclass
class StageTimes:
    """Per-stage latencies in milliseconds, one entry per frame."""

    values: dict[str, list[float]] = field(default_factory=lambda: {stage: [] for stage in STAGES})

    def add(self, **stage_ms: float) -> None:
        for stage, value in stage_ms.items():
            self.values[stage].append(value)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self.values.items():
            if values:
                array = np.asarray(values)
                out[stage] = {
                    "mean_ms": round(float(array.mean()), 3),
                    "p50_ms": round(float(np.percentile(array, 50)), 3),
                    "p95_ms": round(float(np.percentile(array, 95)), 3),
                }
        return out


@dataclass
class CameraSummary:
    """What a camera run did: sustained FPS, per-stage latency, why it stopped."""

    source: str
    backend: str
    precision: str
    frames: int
    seconds: float
    fps: float
    stages: dict[str, dict[str, float]]
    stop_reason: str
    jsonl: str | None = None
    snapshots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# Overlay text: one font, scale and stroke for the outline and the text. OpenCV 5 draws putText with a
# TrueType font whose thickness > 1 selects a bold face with wider advances, so an outline drawn
# thicker than its text no longer lines up with it (the overlay was garbled); the outline is the
# same text drawn at small offsets instead, which lines up under OpenCV 4's Hershey strokes too.
TEXT_THICKNESS = 1
TEXT_MARGIN = 10
MIN_TEXT_SCALE = 0.3
_SHRINK = 0.85


def overlay(frame: np.ndarray, prediction: Prediction, fps: float, synthetic: bool) -> np.ndarray:
    """Draw label, probability, FPS and the decision-support note on a copy of ``frame``.

    Lines are wrapped (and the text shrunk) to the frame, so on a narrow frame the model version and
    the SYNTHETIC warning are shown whole rather than cut off at the edge.
    """
    import cv2

    shown = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    colour = (0, 0, 255) if prediction.decision == "abnormal" else (0, 200, 0)
    lines = [
        (
            f"{prediction.label}  p={prediction.probability:.3f} (threshold {prediction.threshold:.3f})",
            colour,
        ),
        (
            f"{fps:.1f} FPS  {prediction.backend} {prediction.precision}  model {prediction.model_version}",
            (255, 255, 255),
        ),
        ("Decision support only, not a diagnosis", (255, 255, 255)),
    ]
    if synthetic:
        lines.append((SYNTHETIC_WARNING, (0, 165, 255)))
    height, width = shown.shape[:2]
    scale, wrapped, step = layout_text([text for text, _ in lines], width, height)
    y = TEXT_MARGIN
    for rows, (_, rgb) in zip(wrapped, lines):
        for row in rows:
            y += step
            draw_outlined(shown, row, (TEXT_MARGIN, y), scale, rgb)
    return shown


def layout_text(texts: list[str], width: int, height: int) -> tuple[float, list[list[str]], int]:
    """The largest scale at which every text, wrapped to the frame width, also fits its height.

    Returns the scale, each text's lines and the line step in pixels. Starts from the size the
    overlay has on a wide frame (``width / 1600``, at least 0.5) and shrinks to ``MIN_TEXT_SCALE``;
    a frame too small even for that gets the smallest text, wrapped, and loses lines at the bottom.
    """
    scale = max(0.5, width / 1600)
    usable = max(1, width - 2 * TEXT_MARGIN)
    while True:
        wrapped = [wrap_text(text, scale, usable) for text in texts]
        step = _line_step(scale)
        if TEXT_MARGIN + step * sum(len(rows) for rows in wrapped) <= height or scale <= MIN_TEXT_SCALE:
            return scale, wrapped, step
        scale = max(MIN_TEXT_SCALE, scale * _SHRINK)


def wrap_text(text: str, scale: float, max_width: int) -> list[str]:
    """``text`` in lines at most ``max_width`` pixels wide: split at spaces, and inside a word wider than a line."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if _text_width(candidate, scale) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while len(word) > 1 and _text_width(word, scale) > max_width:
            cut = _fitting_prefix(word, scale, max_width)
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def _fitting_prefix(word: str, scale: float, max_width: int) -> int:
    """Length of the longest prefix of ``word`` that fits (at least one character), by bisection."""
    low, high = 1, len(word)
    while low < high:
        middle = (low + high + 1) // 2
        if _text_width(word[:middle], scale) <= max_width:
            low = middle
        else:
            high = middle - 1
    return low


def _text_width(text: str, scale: float) -> int:
    import cv2

    (width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_THICKNESS)
    return int(width) + 2 * outline_radius(scale)


def _line_step(scale: float) -> int:
    import cv2

    (_, height), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_THICKNESS)
    return int(height + baseline) + 2 * outline_radius(scale) + 2


def outline_radius(scale: float) -> int:
    return 1 if scale < 0.8 else 2


def draw_outlined(
    image: np.ndarray, text: str, origin: tuple[int, int], scale: float, rgb: tuple[int, int, int]
) -> None:
    """``text`` in ``rgb`` over a black outline of the very same glyphs, so it reads on any background."""
    import cv2

    x, y = origin
    radius = outline_radius(scale)
    for dx in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            if dx or dy:
                cv2.putText(
                    image, text, (x + dx, y + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    TEXT_THICKNESS, cv2.LINE_AA,
                )  # fmt: skip
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, rgb, TEXT_THICKNESS, cv2.LINE_AA)


class Window:
    """An OpenCV window; refuses to exist where OpenCV has no GUI."""

    def __init__(self, title: str, build_info: str | None = None) -> None:
        if not opencv_has_gui(build_info):
            raise CameraError(
                "this OpenCV has no GUI (opencv-python-headless, 'GUI: NONE'), so no window can open: "
                "run with --headless --jsonl results.jsonl, or use an OpenCV with GUI support "
                "(JetPack's, via a --system-site-packages venv)"
            )
        self.title = title

    def show(self, image: np.ndarray) -> bool:
        """Show ``image``; False when the user pressed q or Esc."""
        import cv2

        cv2.imshow(self.title, image)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.title)


def run_stamp() -> str:
    """``20250301T101500Z-3f9a``: a run's UTC start and a random suffix, so runs in one second differ."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


def _snapshot(folder: Path, stem: str, image: np.ndarray) -> Path:
    """``image`` as a new PNG ``stem.png`` in ``folder`` (``stem-1.png``, ... when that name is taken).

    Written to a temporary file, fsynced, then placed without replacing anything: a snapshot of an
    earlier run is what that run's JSONL lines point at, so it is never overwritten.
    """
    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise CameraError(f"could not encode snapshot {stem}.png")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates 0600 files; snapshots are looked at by other users.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(encoded.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        for attempt in itertools.count():
            path = folder / (f"{stem}.png" if attempt == 0 else f"{stem}-{attempt}.png")
            try:
                place_new(tmp, path)
            except FileExistsError:
                continue
            break
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return path


def check_outputs(config: CameraConfig) -> None:
    """Refuse outputs that would change a file the camera does not own; called before any is written.

    The JSONL is appended to (and a torn last line cut), so it must not be the source video nor an
    existing file that is not a JSON-lines log; no output may go into a bundle folder, since a file
    there that its manifest does not list makes 'pneumo edge predict' refuse the bundle.
    """
    if config.jsonl is not None:
        _refuse_inside_bundle(config.jsonl, "--jsonl", "--jsonl")
        _refuse_the_source(config.jsonl, config.source)
        _refuse_foreign_file(config.jsonl)
    snapshots = config.snapshots
    if snapshots is not None:
        named = "--snapshot-dir" if config.snapshot_dir is not None else "the snapshot folder"
        _refuse_inside_bundle(snapshots, named, "--snapshot-dir")


def bundle_holding(path: Path) -> Path | None:
    """The bundle folder ``path`` is, or is inside (symbolic links resolved); None when there is none."""
    real = Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        # os.path.isfile, unlike Path.is_file, is False for a folder it may not read.
        if os.path.isfile(folder / MANIFEST_FILE) and os.path.isfile(folder / MODEL_INFO_FILE):
            return folder
    return None


def _refuse_inside_bundle(path: Path, named: str, flag: str) -> None:
    """Refuse ``path`` (the output ``named``, set by ``flag``) when it lies in a bundle folder."""
    root = bundle_holding(path)
    if root is None:
        return
    outside = root.parent / f"{root.name}-camera" / (path.name if flag == "--jsonl" else "snapshots")
    raise CameraError(
        f"{path}: {named} is inside the bundle {root}; a file written there is not in its {MANIFEST_FILE}, "
        f"so 'pneumo edge predict {root}' would refuse the bundle afterwards: write camera outputs to a "
        f"folder outside the bundle, e.g. {flag} {outside}"
    )


def _refuse_the_source(jsonl: Path, source: str) -> None:
    try:
        same = os.path.samefile(jsonl, source)
    except OSError:  # one of them does not exist: a new JSONL, or a camera rather than a file
        return
    if same:
        raise CameraError(
            f"{jsonl}: --jsonl is the --source video {source}, which would be appended to and cut; "
            "the input is only read: write the results to another file, e.g. --jsonl frames.jsonl"
        )


def _refuse_foreign_file(path: Path) -> None:
    """Refuse an existing ``path`` unless it reads as a JSON-lines log (see :func:`foreign_log_reason`)."""
    reason = foreign_log_reason(path)
    if reason is not None:
        raise CameraError(
            f"{path}: --jsonl names an existing file that is not a JSON-lines log ({reason}); results are "
            "only appended to a log of one JSON object a line, and this file is left as it is: "
            "give --jsonl a new file name, or the JSONL of an earlier camera run"
        )


def foreign_log_reason(path: Path) -> str | None:
    """Why ``path`` is not a JSON-lines log that may be appended to; None when it is one or is absent.

    Reads at most :data:`LOG_CHECK_BYTES` at each end: the first and the last complete line must be
    JSON objects. What follows the last newline is the torn line a crash may leave, and is cut
    before appending, so a file with no complete line is taken only if it starts like a record
    (``{"``) that breaks off, never when it is one whole value (someone's JSON file).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        return "it is a folder"
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return None  # /dev/null, a pipe or an empty file: nothing in it to keep or cut
    with open(path, "rb") as handle:
        head = handle.read(LOG_CHECK_BYTES)
        # One byte more than checked, so a line starting right at the window's edge is seen to.
        window_start = max(0, info.st_size - LOG_CHECK_BYTES - 1)
        handle.seek(window_start)
        tail = handle.read(LOG_CHECK_BYTES + 1)
    if b"\n" not in head:
        if info.st_size > LOG_CHECK_BYTES:
            return f"no line break in its first {LOG_CHECK_BYTES} bytes"
        # A record cut off, or the zeros a power cut leaves before the first line reached the disk.
        torn_record = (head.startswith(b'{"') and not _is_json_object(head)) or not head.strip(b"\0")
        return None if torn_record else "it has no complete line"
    first = head[: head.index(b"\n")]
    end = tail.rfind(b"\n")
    start = tail.rfind(b"\n", 0, max(end, 0)) + 1
    if end < 0 or (start == 0 and window_start > 0):
        return f"its last line is longer than {LOG_CHECK_BYTES} bytes"
    last = tail[start:end]
    for name, line in (("first", first), ("last", last)):
        if not _is_json_object(line):
            return f"its {name} line is not a JSON object"
    return None


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # UnicodeDecodeError too
        return False


@dataclass
class _InferredFrame:
    """One captured frame, its prediction and how long each stage took."""

    image: np.ndarray
    prediction: Prediction
    capture_ms: float
    preprocess_ms: float
    infer_ms: float
    #: perf_counter() when inference finished
    done: float


class _RecentRate:
    """Frames per second over the last 30 frames: what the overlay shows as the live rate."""

    def __init__(self) -> None:
        self.recent: list[float] = []

    def tick(self, now: float) -> float:
        self.recent = [*self.recent[-29:], now]
        first, last = self.recent[0], self.recent[-1]
        return (len(self.recent) - 1) / (last - first) if len(self.recent) > 1 and last > first else 0.0


class _FrameOutputs:
    """Where each inferred frame goes, in order: a snapshot, the JSONL, ``on_frame``, the window."""

    def __init__(
        self,
        config: CameraConfig,
        synthetic: bool,
        window: Window | None,
        on_frame: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.snapshot_dir = config.snapshots
        self.snapshot_every_s = config.snapshot_every_s
        self.synthetic = synthetic
        self.window = window
        self.on_frame = on_frame
        self.snapshots: list[str] = []
        self.last_snapshot = -float("inf")
        self.run = run_stamp()
        self.results: AppendLog | None = None
        check_outputs(config)
        if config.jsonl is not None:
            config.jsonl.parent.mkdir(parents=True, exist_ok=True)
            # Append, never truncate: a previous run's results are someone's record. A last line torn
            # by a crash or power cut in that run is cut first, so every line stays one JSON record.
            self.results = AppendLog(config.jsonl, "jsonl")
            self.results.repair_tail(last_line_start(config.jsonl))

    def deliver(self, frame: _InferredFrame, index: int, fps: float) -> bool:
        """Send ``frame`` everywhere it goes; False when the user closed the window."""
        record = frame.prediction.to_dict()
        record.update(
            frame=index,
            capture_ms=round(frame.capture_ms, 3),
            preprocess_ms=round(frame.preprocess_ms, 3),
            infer_ms=round(frame.infer_ms, 3),
            fps=round(fps, 2),
        )
        shown = None
        if self.snapshot_dir is not None and frame.done - self.last_snapshot >= self.snapshot_every_s:
            shown = overlay(frame.image, frame.prediction, fps, self.synthetic)
            path = _snapshot(self.snapshot_dir, f"snapshot_{self.run}_{index:07d}", shown)
            self.snapshots.append(str(path))
            record["snapshot"] = str(path)
            self.last_snapshot = frame.done
        if self.results is not None:
            # One write and an fsync per frame: a crash loses at most the frame being written.
            self.results.append([record])
        if self.on_frame is not None:
            self.on_frame(record)
        if self.window is None:
            return True
        if shown is None:
            shown = overlay(frame.image, frame.prediction, fps, self.synthetic)
        return self.window.show(shown)


def _capture_and_infer(
    capture: Any, predictor: Predictor, contract: PreprocessContract, source_name: str, first: bool
) -> _InferredFrame | None:
    """Read, preprocess and infer one frame, timing each stage; None at the end of the stream."""
    t0 = time.perf_counter()
    ok, frame = capture.read()
    t1 = time.perf_counter()
    if not ok or frame is None:
        if first:
            raise CameraError(
                f"{source_name}: opened, but delivered no frame (check the camera and pipeline)"
            )
        return None
    model_input = apply_contract(frame, contract)
    t2 = time.perf_counter()
    prediction = predictor.predict(model_input[np.newaxis], [source_name])[0]
    t3 = time.perf_counter()
    return _InferredFrame(frame, prediction, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, t3)


def run_camera(
    capture: Any,
    predictor: Predictor,
    contract: PreprocessContract,
    config: CameraConfig,
    stop: Event,
    source_name: str,
    window: Window | None = None,
    on_frame: Callable[[dict[str, Any]], None] | None = None,
) -> CameraSummary:
    """Capture -> preprocess -> infer until ``stop`` is set, the stream ends or ``max_frames``."""
    times = StageTimes()
    rate = _RecentRate()
    frames, stop_reason = 0, "stopped by signal"
    started = time.perf_counter()
    pace = _frame_interval(capture) if config.realtime else 0.0
    try:
        # Inside the try: outputs refused before the first frame still release the camera.
        outputs = _FrameOutputs(config, predictor.info.synthetic, window, on_frame)
        while not stop.is_set():
            if pace and frames:
                # Play a file at its own frame rate, as a live camera would deliver it.
                stop.wait(max(0.0, started + frames * pace - time.perf_counter()))
                if stop.is_set():
                    break
            frame = _capture_and_infer(capture, predictor, contract, source_name, first=frames == 0)
            if frame is None:
                stop_reason = "end of stream"
                break
            frames += 1
            times.add(capture=frame.capture_ms, preprocess=frame.preprocess_ms, infer=frame.infer_ms)
            if not outputs.deliver(frame, frames - 1, rate.tick(frame.done)):
                stop_reason = "window closed (q/Esc)"
                break
            if config.max_frames and frames >= config.max_frames:
                stop_reason = f"--max-frames {config.max_frames} reached"
                break
    finally:
        capture.release()
        if window is not None:
            window.close()
    seconds = time.perf_counter() - started
    return CameraSummary(
        source=source_name,
        backend=predictor.backend.name,
        precision=predictor.backend.precision,
        frames=frames,
        seconds=round(seconds, 3),
        fps=round(frames / seconds, 2) if seconds > 0 else 0.0,
        stages=times.summary(),
        stop_reason=stop_reason,
        jsonl=str(config.jsonl) if config.jsonl is not None else None,
        snapshots=outputs.snapshots,
    )


def last_line_start(path: Path) -> int:
    """Offset just past the last newline of ``path`` (0 without one): where a torn last line starts.

    AppendLog.repair_tail examines only what follows this offset, so the complete lines of earlier
    runs, which carry no result id, are never taken for garbage.
    """
    try:
        with open(path, "rb") as handle:
            position = handle.seek(0, os.SEEK_END)
            while position > 0:
                step = min(1 << 16, position)
                position -= step
                handle.seek(position)
                found = handle.read(step).rfind(b"\n")
                if found >= 0:
                    return position + found + 1
    except FileNotFoundError:
        pass
    return 0


def _frame_interval(capture: Any) -> float:
    import cv2

    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    return 1.0 / fps if 0.1 < fps < 1000 else 0.0
