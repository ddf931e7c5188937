"""``pneumo edge camera`` on generated video files, headless; CSI and GUI detection; SIGTERM stop;
outputs that would change a file the camera does not own are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.bundle import Bundle
from edge_runtime.camera import (
    CameraConfig,
    CameraSummary,
    Window,
    _snapshot,
    csi_pipeline,
    open_capture,
    run_camera,
)
from edge_runtime.cli import main
from edge_runtime.device import opencv_capture_backends
from edge_runtime.errors import CameraError
from edge_runtime.predictor import Predictor
from edge_runtime.sources import CameraSource, parse_camera_source
from tests.conftest import REPO, write_image

HEADLESS_BUILD = "  GUI:                           NONE\n"
GSTREAMER_BUILD = (
    "Video I/O:\n    FFMPEG:   YES\n    GStreamer:   YES (1.20.3)\n    v4l/v4l2:  YES (linux/videodev2.h)\n"
)


def make_video(
    path: Path, frames: int, fps: float = 10.0, fourcc: str = "mp4v", bright_first: bool = False
) -> Path:
    """Bright and dark frames alternating in blocks of five, dark ones first unless ``bright_first``
    (a real encoded file)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (64, 48))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 235 if ((i // 5) % 2) != bright_first else 20, np.uint8))
    writer.release()
    return path


def headless_argv(bundle_root: Path, source: str, jsonl: Path) -> list[str]:
    """``pneumo edge camera`` arguments for a headless run that logs every frame to ``jsonl``."""
    return ["camera", str(bundle_root), "--source", source, "--headless", "--jsonl", str(jsonl)]


def run_headless(bundle_root: Path, config: CameraConfig) -> CameraSummary:
    """``run_camera`` on ``config.source`` with the bundle's FP32 ONNX model, as the CLI wires it."""
    bundle = Bundle.open(bundle_root)
    source = parse_camera_source(config.source)
    with OnnxRuntimeBackend(bundle.onnx_path("fp32")) as backend:
        return run_camera(
            open_capture(source, config),
            Predictor(backend, bundle.info, "sha"),
            bundle.contract,
            config,
            threading.Event(),
            source.describe(),
        )


def test_csi_pipeline_is_built_from_the_flags() -> None:
    pipeline = csi_pipeline(1, 1920, 1080, 30, flip=2)
    assert pipeline.startswith(
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=(int)1920, height=(int)1080"
    )
    assert "framerate=(fraction)30/1" in pipeline and "nvvidconv flip-method=2" in pipeline
    assert pipeline.endswith("appsink drop=true max-buffers=1 sync=false")


def test_csi_on_an_opencv_without_gstreamer_explains_why() -> None:
    backends = opencv_capture_backends()
    source = CameraSource("csi", "csi://0", 0)
    if backends["gstreamer"]:
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(
        CameraError, match=r"GStreamer: NO .*package index.*--system-site-packages.*/dev/video0"
    ):
        open_capture(source, CameraConfig(source="csi://0"))
    assert opencv_capture_backends(GSTREAMER_BUILD) == {"gstreamer": True, "v4l2": True, "ffmpeg": True}


def test_headless_opencv_has_no_window() -> None:
    with pytest.raises(CameraError, match=r"no GUI.*--headless --jsonl"):
        Window("pneumo-edge", build_info=HEADLESS_BUILD)


def test_camera_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="--headless needs --jsonl"):
        CameraConfig(source="0", headless=True)
    with pytest.raises(CameraError, match="flip-method"):
        CameraConfig(source="0", flip=9)
    assert (
        CameraConfig(source="0", jsonl=tmp_path / "r.jsonl", snapshot_every_s=2).snapshots
        == tmp_path / "snapshots"
    )


def test_headless_run_on_a_video_file(tiny_bundle: Path, tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.mp4", 20)
    jsonl = tmp_path / "out" / "frames.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text('{"earlier": "run"}\n')
    config = CameraConfig(source=str(video), headless=True, jsonl=jsonl, snapshot_every_s=1e-6)
    summary = run_headless(tiny_bundle, config)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert lines[0] == {"earlier": "run"}, "an existing JSONL is appended to, never truncated"
    frames = lines[1:]
    assert summary.frames == 20 == len(frames) and summary.stop_reason == "end of stream"
    assert [f["frame"] for f in frames] == list(range(20))
    assert [f["decision"] for f in frames[:10]] == ["normal"] * 5 + ["abnormal"] * 5
    first = frames[0]
    assert (
        first["model_version"] == "tiny-test-1"
        and first["threshold"] == 0.5
        and first["backend"] == "ort-cpu"
    )
    assert first["warning"].startswith("SYNTHETIC") and first["source"] == f"video file {video}"
    assert {"capture_ms", "preprocess_ms", "infer_ms", "fps", "probability", "label"} <= set(first)
    assert set(summary.stages) == {"capture", "preprocess", "infer"} and summary.fps > 0
    assert len(summary.snapshots) == 20 and [f["snapshot"] for f in frames] == summary.snapshots
    assert Path(summary.snapshots[0]).name.startswith("snapshot_")
    assert Path(summary.snapshots[0]).name.endswith("_0000000.png")
    assert cv2.imread(summary.snapshots[0]).shape == (48, 64, 3)


def test_max_frames_and_cli_summary(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = make_video(tmp_path / "clip.avi", 30, fourcc="MJPG")
    jsonl = tmp_path / "frames.jsonl"
    code = main([*headless_argv(tiny_bundle, str(video), jsonl), "--max-frames", "7", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["frames"] == 7 and summary["stop_reason"] == "--max-frames 7 reached"
    assert len(jsonl.read_text().splitlines()) == 7
    assert "FPS sustained" in err and "preprocess" in err and "Decision support" in err


def test_window_mode_on_headless_opencv_fails_clearly(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = make_video(tmp_path / "clip.mp4", 3)
    if "GUI:                           NONE" not in cv2.getBuildInformation():
        pytest.skip("this OpenCV has a GUI")
    assert main(["camera", str(tiny_bundle), "--source", str(video)]) == 1
    assert "no GUI" in capsys.readouterr().err


def test_missing_device_fails_clearly(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(headless_argv(tiny_bundle, "/dev/video97", Path("/dev/null"))) == 1
    assert "could not open USB/V4L2 camera /dev/video97" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_real_process_cleanly(tiny_bundle: Path, tmp_path: Path, signum: int) -> None:
    video = make_video(tmp_path / "long.mp4", 200, fps=20.0)  # 10 s when played in real time
    jsonl = tmp_path / "frames.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_runtime.pneumo_cli",
            "edge",
            *headless_argv(tiny_bundle, str(video), jsonl),
            "--realtime",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 3):
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["stop_reason"] == "stopped by signal" and 3 <= summary["frames"] < 200
    assert f"{signal.Signals(signum).name} received" in err
    lines = jsonl.read_text().splitlines()
    assert len(lines) == summary["frames"] and all(
        json.loads(line)["frame"] == i for i, line in enumerate(lines)
    )


class ClosingWindow(Window):
    """Stands in for the GUI window (this OpenCV may have none): shows frames, then is closed by the user."""

    def __init__(self, close_after: int) -> None:
        self.title = "test"
        self.close_after = close_after
        self.shown: list[tuple[int, ...]] = []
        self.closed = False

    def show(self, image: np.ndarray) -> bool:
        self.shown.append(image.shape)
        return len(self.shown) < self.close_after

    def close(self) -> None:
        self.closed = True


def test_closing_the_window_stops_and_every_frame_reaches_on_frame(tiny_bundle: Path, tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.mp4", 10)
    config = CameraConfig(source=str(video))
    bundle = Bundle.open(tiny_bundle)
    source = parse_camera_source(config.source)
    window = ClosingWindow(close_after=4)
    records: list[dict[str, object]] = []
    with OnnxRuntimeBackend(bundle.onnx_path("fp32")) as backend:
        summary = run_camera(
            open_capture(source, config),
            Predictor(backend, bundle.info, "sha"),
            bundle.contract,
            config,
            threading.Event(),
            source.describe(),
            window=window,
            on_frame=records.append,
        )
    assert summary.frames == 4 and summary.stop_reason == "window closed (q/Esc)"
    assert window.closed and window.shown == [(48, 64, 3)] * 4
    assert [r["frame"] for r in records] == [0, 1, 2, 3] and "snapshot" not in records[0]
    assert summary.jsonl is None and summary.snapshots == []


def test_a_capture_that_delivers_no_frame_is_an_error(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    capture = cv2.VideoCapture()  # opened on nothing: read() gives no frame
    with (
        OnnxRuntimeBackend(bundle.onnx_path("fp32")) as backend,
        pytest.raises(CameraError, match="nowhere: opened, but delivered no frame"),
    ):
        run_camera(
            capture,
            Predictor(backend, bundle.info, "sha"),
            bundle.contract,
            CameraConfig(source="0"),
            threading.Event(),
            "nowhere",
        )


def test_realtime_plays_a_file_at_its_frame_rate(tiny_bundle: Path, tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.mp4", 6, fps=20.0)
    config = CameraConfig(source=str(video), headless=True, jsonl=tmp_path / "f.jsonl", realtime=True)
    summary = run_headless(tiny_bundle, config)
    assert summary.frames == 6 and summary.stop_reason == "end of stream"
    assert summary.seconds >= 5 / 20.0  # five waits of 50 ms between six frames


def test_jsonl_that_is_the_source_video_is_refused_and_the_video_kept(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = make_video(tmp_path / "clip2.avi", 5, fourcc="MJPG")
    before = video.read_bytes()
    (tmp_path / "link.avi").symlink_to(video)
    for jsonl in (video, tmp_path / "link.avi"):
        code = main([*headless_argv(tiny_bundle, str(video), jsonl), "--max-frames", "1"])
        err = capsys.readouterr().err
        assert code == 1, err
        assert f"{jsonl}: --jsonl is the --source video {video}" in err and "another file" in err
        assert video.read_bytes() == before, "the input video was changed"


def _png_bytes() -> bytes:
    ok, encoded = cv2.imencode(".png", np.arange(64 * 48, dtype=np.uint8).reshape(48, 64))
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(_png_bytes(), "its first line is not a JSON object", id="png"),
        pytest.param(b"notes on the scan\nmore notes", "its first line is not a JSON object", id="text"),
        pytest.param(b'{"a": 1}\nplain text\n', "its last line is not a JSON object", id="text-after-json"),
        pytest.param(b'{"threshold": 0.5}', "it has no complete line", id="json-without-newline"),
        pytest.param(b'{\n  "threshold": 0.5\n}\n', "its first line is not a JSON object", id="pretty-json"),
        pytest.param(
            b'{"a": 1}\n' + b"x" * (2 << 20), "its last line is longer than 1048576 bytes", id="huge-tail"
        ),
    ],
)
def test_jsonl_naming_a_file_that_is_not_json_lines_is_refused_untouched(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, reason: str
) -> None:
    video = make_video(tmp_path / "clip.avi", 5, fourcc="MJPG")
    jsonl = tmp_path / "scan_copy.png"
    jsonl.write_bytes(content)
    code = main([*headless_argv(tiny_bundle, str(video), jsonl), "--max-frames", "1"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{jsonl}: --jsonl names an existing file that is not a JSON-lines log ({reason})" in err
    assert "give --jsonl a new file name" in err
    assert jsonl.read_bytes() == content, "a file that is not the camera's log was changed"


def test_snapshots_of_an_earlier_run_are_kept_and_its_jsonl_still_points_at_them(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dark = make_video(tmp_path / "dark.avi", 3, fourcc="MJPG")
    bright = make_video(tmp_path / "bright.avi", 3, fourcc="MJPG", bright_first=True)
    jsonl = tmp_path / "cam2" / "frames.jsonl"
    kept: dict[str, bytes] = {}
    for video in (dark, bright):
        argv = [
            *headless_argv(tiny_bundle, str(video), jsonl),
            "--snapshot-every",
            "0.0001",
            "--max-frames",
            "2",
        ]
        assert main(argv) == 0, capsys.readouterr().err
        for record in map(json.loads, jsonl.read_text().splitlines()):
            kept.setdefault(record["snapshot"], Path(record["snapshot"]).read_bytes())
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 0, 1]
    assert [r["decision"] for r in records] == ["normal"] * 2 + ["abnormal"] * 2
    paths = [r["snapshot"] for r in records]
    assert len(set(paths)) == 4, f"two runs wrote the same snapshot name: {paths}"
    assert sorted(paths) == sorted(str(p) for p in (tmp_path / "cam2" / "snapshots").iterdir())
    for path in paths:
        assert Path(path).read_bytes() == kept[path], f"{path} was replaced by a later run"
    # Each record's image is the frame it describes: dark frames in the first run, bright in the second.
    means = [float(cv2.imread(path, cv2.IMREAD_GRAYSCALE)[30:, :].mean()) for path in paths]
    assert max(means[:2]) < 100 < min(means[2:]), means


def test_a_snapshot_never_replaces_a_file_of_its_name(tmp_path: Path) -> None:
    taken = tmp_path / "snapshot_x_0000000.png"
    taken.write_bytes(b"someone's image")
    image = np.full((48, 64, 3), 200, np.uint8)
    written = _snapshot(tmp_path, "snapshot_x_0000000", image)
    assert written == tmp_path / "snapshot_x_0000000-1.png"
    assert taken.read_bytes() == b"someone's image"
    assert cv2.imread(str(written)).shape == (48, 64, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [written.name, taken.name], (
        "a temporary file was left"
    )


@pytest.mark.parametrize("where", ["jsonl", "jsonl-in-engines", "jsonl-through-link", "snapshot-dir"])
def test_camera_outputs_inside_the_bundle_are_refused_and_the_bundle_still_verifies(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    video = make_video(tmp_path / "clip.avi", 5, fourcc="MJPG")
    (tmp_path / "link").symlink_to(tiny_bundle)
    jsonl, extra, named = {
        "jsonl": (tiny_bundle / "x.jsonl", [], "--jsonl"),
        "jsonl-in-engines": (tiny_bundle / "engines" / "x.jsonl", [], "--jsonl"),
        "jsonl-through-link": (tmp_path / "link" / "x.jsonl", [], "--jsonl"),
        "snapshot-dir": (
            tmp_path / "out" / "x.jsonl",
            ["--snapshot-every", "0.0001", "--snapshot-dir", str(tiny_bundle / "snaps")],
            "--snapshot-dir",
        ),
    }[where]
    listed = sorted(p.relative_to(tiny_bundle) for p in tiny_bundle.rglob("*"))
    code = main([*headless_argv(tiny_bundle, str(video), jsonl), "--max-frames", "1", *extra])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{named} is inside the bundle {tiny_bundle.resolve()}" in err
    assert "write camera outputs to a folder outside the bundle" in err
    assert sorted(p.relative_to(tiny_bundle) for p in tiny_bundle.rglob("*")) == listed
    image = write_image(tmp_path / "scan.png", np.full((40, 40), 128, np.uint8))
    assert main(["predict", str(tiny_bundle), str(image), "--json"]) == 0, capsys.readouterr().err
