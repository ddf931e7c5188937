"""What this machine is and has: GPU, TensorRT, CUDA, ONNX Runtime, Jetson facts.

Read-only by design: nothing here changes device state (no ``nvpmodel -m``,
no ``jetson_clocks``, no sysfs writes), so ``pneumo edge doctor`` is safe to
run on a device in service, and the benchmarks can record the same facts.

Two kinds of facts:

* :func:`cuda_device` / :func:`tensorrt_version` come from pycuda and the
  TensorRT bindings themselves. They key the engines (:func:`device_key`) and
  fill engine sidecars, so the build and the runtime read them from the same
  source and a mismatch is a real one.
* :func:`collect_device_facts` gathers everything the doctor shows, each item
  best-effort (a missing tool is reported as missing, never raised).
"""

from __future__ import annotations

import base64
import glob
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import BackendUnavailableError

TENSORRT_HINT = (
    "TensorRT's Python bindings come with JetPack (apt: nvidia-jetpack or python3-libnvinfer), "
    "not from the package index; create the venv with 'python3 -m venv --system-site-packages .venv' "
    "so it sees them (deploy/JETSON.md)"
)
PYCUDA_HINT = (
    "pycuda builds against the CUDA toolkit JetPack installs: "
    "export PATH=/usr/local/cuda/bin:$PATH, then pip install 'pycuda>=2024.1' (not the gpu extra on a Jetson: "
    "its onnxruntime-gpu has no aarch64 wheel; deploy/JETSON.md)"
)
ORT_GPU_HINT = (
    "the ONNX Runtime on the package index is CPU-only on aarch64; on a Jetson install NVIDIA's "
    "onnxruntime-gpu wheel for your JetPack release (deploy/JETSON.md)"
)

# An 83-byte ONNX model (one Identity node) used to check which ONNX Runtime
# execution providers actually load: get_available_providers() lists CUDA and
# TensorRT even where their libraries are missing, so a session is the only
# honest test. Embedded so the check needs neither a bundle nor the onnx package.
_PROBE_ONNX = base64.b64decode(
    "CAcSDHBuZXVtby1wcm9iZTo7ChAKAXgSAXkiCElkZW50aXR5EgVwcm9iZVoPCgF4EgoKCAgBEgQKAggBYg8KAXkSCgoICAESBAoCCAFCBAoAEA0="
)


@dataclass(frozen=True)
class CudaDevice:
    """The CUDA GPU engines are built for and run on, as pycuda reports it."""

    name: str
    compute_capability: str
    total_memory_mib: int
    index: int = 0


def cuda_device(index: int = 0) -> CudaDevice:
    """GPU name and compute capability from pycuda (the source engine sidecars use)."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendUnavailableError(f"pycuda is not installed ({exc}); {PYCUDA_HINT}") from exc
    try:
        cuda.init()
        count = cuda.Device.count()
        if index >= count:
            raise BackendUnavailableError(f"CUDA device {index} requested, this machine has {count}")
        device = cuda.Device(index)
        major, minor = device.compute_capability()
        return CudaDevice(
            name=str(device.name()),
            compute_capability=f"{major}.{minor}",
            total_memory_mib=int(device.total_memory()) >> 20,
            index=index,
        )
    except cuda.Error as exc:
        raise BackendUnavailableError(f"no usable CUDA GPU: {exc}") from exc


def tensorrt_version() -> str:
    """The installed TensorRT version, or a clear error with the JetPack hint."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT is not installed ({exc}); {TENSORRT_HINT}") from exc
    return str(trt.__version__)


def tensorrt_and_gpu(index: int = 0) -> tuple[str, CudaDevice]:
    """The TensorRT version and the GPU; one error naming everything missing, not just the first."""
    problems: list[str] = []
    version: str | None = None
    gpu: CudaDevice | None = None
    try:
        version = tensorrt_version()
    except BackendUnavailableError as exc:
        problems.append(str(exc))
    try:
        gpu = cuda_device(index)
    except BackendUnavailableError as exc:
        problems.append(str(exc))
    if version is None or gpu is None:
        raise BackendUnavailableError(" AND ".join(problems))
    return version, gpu


#: pneumo-edge builds engines with TensorRT 10.x (JetPack 6.1+) or 11.x; see engine_from_onnx's table.
MIN_TENSORRT_MAJOR = 10


def tensorrt_too_old(version: str) -> str | None:
    """Why engines cannot be built with this TensorRT version, or None when they can."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        return None  # unreadable: the builder's own version check reports it
    if major >= MIN_TENSORRT_MAJOR:
        return None
    return (
        f"TensorRT {version} is older than {MIN_TENSORRT_MAJOR}.0; pneumo-edge builds with TensorRT 10.x "
        "(JetPack 6.1 or later) or 11.x. Upgrade JetPack, or run the ONNX models with --backend ort-cpu"
    )


def device_key(gpu_name: str, compute_capability: str, trt_version: str) -> str:
    """Folder name engines are kept under: GPU, compute capability and TensorRT version.

    An engine is only valid for the GPU model and TensorRT version that built it,
    so two Jetsons of the same model share a key and a different one never does.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return f"{slug}-sm{compute_capability.replace('.', '')}-trt{trt_version}"


def read_l4t_release(path: str | Path = "/etc/nv_tegra_release") -> str | None:
    """'R36.3.0' from a first line like '# R36 (release), REVISION: 3.0, GCID: ...'."""
    try:
        first = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
    return f"R{match.group(1)}.{match.group(2)}" if match else first.strip("# ").strip() or None


def jetpack_for_l4t(l4t: str | None) -> str | None:
    """JetPack major release for an L4T release (R36 -> 6, R35 -> 5, R32 -> 4)."""
    if not l4t:
        return None
    match = re.match(r"R(\d+)", l4t)
    major = (
        {36: "6", 35: "5", 34: "5 (developer preview)", 32: "4"}.get(int(match.group(1))) if match else None
    )
    return f"JetPack {major}.x" if major else None


def parse_nvpmodel(output: str) -> str | None:
    """'MAXN (mode 0)' from ``nvpmodel -q`` output ('NV Power Mode: MAXN' then '0')."""
    match = re.search(r"NV Power Mode:\s*(\S+)", output)
    if not match:
        return None
    rest = output[match.end() :].split()
    return f"{match.group(1)} (mode {rest[0]})" if rest and rest[0].isdigit() else match.group(1)


def _run_read_only(command: list[str], timeout: float = 5.0) -> str | None:
    """Output of a read-only query tool, or None when it is absent or fails."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def opencv_capture_backends(build_info: str | None = None) -> dict[str, bool]:
    """Which capture back-ends OpenCV was built with (GStreamer, V4L2, FFMPEG), from its build info."""
    if build_info is None:
        import cv2

        build_info = cv2.getBuildInformation()
    section = build_info.split("Video I/O:", 1)[-1] if "Video I/O:" in build_info else build_info
    found = {}
    for name, pattern in (
        ("gstreamer", r"GStreamer:\s*(\S+)"),
        ("v4l2", r"v4l/v4l2:\s*(\S+)"),
        ("ffmpeg", r"FFMPEG:\s*(\S+)"),
    ):
        match = re.search(pattern, section)
        found[name] = bool(match and match.group(1).upper() not in ("NO", "NONE"))
    return found


def opencv_has_gui(build_info: str | None = None) -> bool:
    """False for opencv-python-headless (its build info says 'GUI: NONE'): no imshow window."""
    if build_info is None:
        import cv2

        build_info = cv2.getBuildInformation()
    match = re.search(r"^\s*GUI:\s*(\S+)", build_info, re.MULTILINE)
    return bool(match and match.group(1).upper() != "NONE")


def loadable_onnxruntime_providers() -> tuple[str | None, list[str], dict[str, str]]:
    """(version, providers that really load a session, {listed provider: why it did not load})."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return None, [], {"onnxruntime": f"not installed ({exc})"}
    loaded: list[str] = []
    failed: dict[str, str] = {}
    for provider in ort.get_available_providers():
        if provider in ("AzureExecutionProvider",):
            continue  # a remote-call provider, not a local execution back-end
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 4
            session = ort.InferenceSession(_PROBE_ONNX, sess_options=options, providers=[provider])
            active = session.get_providers()
        except Exception as exc:  # noqa: BLE001 - any failure to load is the answer we report
            failed[provider] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            continue
        if provider in active:
            loaded.append(provider)
        else:
            failed[provider] = f"listed, but the session fell back to {active}"
    return str(ort.__version__), loaded, failed


def _meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    values = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) // 1024  # kB -> MiB
    except OSError:
        pass
    return values


def _cuda_toolkit_version() -> str | None:
    for path in ("/usr/local/cuda/version.json", "/usr/local/cuda/version.txt"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith(".json"):
            try:
                return str(json.loads(text)["cuda"]["version"])
            except (ValueError, KeyError, TypeError):
                continue
        match = re.search(r"([\d.]+)", text)
        if match:
            return match.group(1)
    return None


@dataclass
class DeviceFacts:
    """Everything ``pneumo edge doctor`` reports; each field None/empty when unknown."""

    gpu_name: str | None = None
    compute_capability: str | None = None
    gpu_memory_mib: int | None = None
    gpu_source: str | None = None
    gpu_error: str | None = None
    tensorrt_version: str | None = None
    tensorrt_error: str | None = None
    pycuda_version: str | None = None
    pycuda_error: str | None = None
    cuda_driver_version: str | None = None
    cuda_toolkit_version: str | None = None
    platform_fast_fp16: bool | None = None
    platform_fast_int8: bool | None = None
    dla_cores: int | None = None
    onnxruntime_version: str | None = None
    onnxruntime_providers: list[str] = field(default_factory=list)
    onnxruntime_failed: dict[str, str] = field(default_factory=dict)
    opencv_version: str | None = None
    opencv_backends: dict[str, bool] = field(default_factory=dict)
    opencv_gui: bool | None = None
    jetson_model: str | None = None
    l4t_release: str | None = None
    jetpack: str | None = None
    power_mode: str | None = None
    disk_free_mib: int | None = None
    disk_path: str = "."
    memory_total_mib: int | None = None
    memory_available_mib: int | None = None
    cameras: list[str] = field(default_factory=list)
    python: str = ""
    device_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fill_cuda(facts: DeviceFacts) -> None:
    try:
        import pycuda
        import pycuda.driver as cuda

        facts.pycuda_version = str(getattr(pycuda, "VERSION_TEXT", "installed"))
    except ImportError as exc:
        facts.pycuda_error = f"not installed ({exc})"
        cuda = None
    if cuda is not None:
        try:
            device = cuda_device()
            facts.gpu_name, facts.compute_capability = device.name, device.compute_capability
            facts.gpu_memory_mib, facts.gpu_source = device.total_memory_mib, "pycuda"
            version = cuda.get_driver_version()
            facts.cuda_driver_version = f"{version // 1000}.{(version % 1000) // 10}"
        except BackendUnavailableError as exc:
            facts.gpu_error = str(exc)
    if facts.gpu_name is None:
        smi = _run_read_only(
            ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"]
        )
        if smi and smi.strip():
            parts = [p.strip() for p in smi.splitlines()[0].split(",")]
            if len(parts) >= 3:
                facts.gpu_name, facts.compute_capability, facts.gpu_source = parts[0], parts[1], "nvidia-smi"
                facts.gpu_memory_mib = int(float(parts[2])) if parts[2].replace(".", "").isdigit() else None
    facts.cuda_toolkit_version = _cuda_toolkit_version()


def _fill_tensorrt(facts: DeviceFacts) -> None:
    try:
        import tensorrt as trt
    except ImportError as exc:
        facts.tensorrt_error = f"not installed ({exc})"
        return
    facts.tensorrt_version = str(trt.__version__)
    if facts.gpu_source != "pycuda":
        return  # a Builder needs a working CUDA device; without one these stay unknown
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        facts.dla_cores = int(builder.num_DLA_cores)
        # Removed in TensorRT 11 (strongly typed networks only): unknown there, not False.
        facts.platform_fast_fp16 = getattr(builder, "platform_has_fast_fp16", None)
        facts.platform_fast_int8 = getattr(builder, "platform_has_fast_int8", None)
    except Exception as exc:  # noqa: BLE001 - report, never crash the doctor
        facts.tensorrt_error = f"installed, but a Builder could not be created: {exc}"


def collect_device_facts(disk_path: str | Path = ".", check_providers: bool = True) -> DeviceFacts:
    """Gather what the doctor and the benchmarks report. Reads only; never changes device state."""
    import platform

    facts = DeviceFacts(python=platform.python_version(), disk_path=str(disk_path))
    _fill_cuda(facts)
    _fill_tensorrt(facts)
    if facts.gpu_name and facts.compute_capability and facts.tensorrt_version:
        facts.device_key = device_key(facts.gpu_name, facts.compute_capability, facts.tensorrt_version)
    if check_providers:
        facts.onnxruntime_version, facts.onnxruntime_providers, facts.onnxruntime_failed = (
            loadable_onnxruntime_providers()
        )
    try:
        import cv2

        facts.opencv_version = str(cv2.__version__)
        info = cv2.getBuildInformation()
        facts.opencv_backends, facts.opencv_gui = opencv_capture_backends(info), opencv_has_gui(info)
    except ImportError:
        pass
    try:
        facts.jetson_model = (
            Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ") or None
        )
    except OSError:
        facts.jetson_model = None
    facts.l4t_release = read_l4t_release()
    facts.jetpack = jetpack_for_l4t(facts.l4t_release)
    nvpmodel = _run_read_only(["nvpmodel", "-q"])
    facts.power_mode = parse_nvpmodel(nvpmodel) if nvpmodel else None
    try:
        facts.disk_free_mib = shutil.disk_usage(disk_path).free >> 20
    except OSError:
        facts.disk_free_mib = None
    memory = _meminfo()
    facts.memory_total_mib, facts.memory_available_mib = memory.get("MemTotal"), memory.get("MemAvailable")
    facts.cameras = sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))
    return facts


@dataclass(frozen=True)
class PrecisionReadiness:
    """Whether one precision can run here through TensorRT, what is missing and how to get it."""

    precision: str
    tensorrt_ready: bool
    missing: tuple[str, ...]
    onnxruntime_fallback: str
    notes: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()


def precision_readiness(facts: DeviceFacts) -> list[PrecisionReadiness]:
    """For fp32/fp16/int8: what a TensorRT engine needs that this machine lacks, with the fix."""
    common: list[tuple[str, str]] = []
    if facts.tensorrt_version is None:
        common.append(("TensorRT", TENSORRT_HINT))
    elif too_old := tensorrt_too_old(facts.tensorrt_version):
        common.append(("TensorRT 10 or later", too_old))
    if facts.pycuda_version is None:
        common.append(("pycuda", PYCUDA_HINT))
    if facts.gpu_source != "pycuda" and facts.pycuda_version is not None:
        common.append(("a CUDA GPU", f"pycuda sees none ({facts.gpu_error or 'no device'})"))
    ort_fallback = (
        "ort-trt"
        if "TensorrtExecutionProvider" in facts.onnxruntime_providers
        else "ort-cuda"
        if "CUDAExecutionProvider" in facts.onnxruntime_providers
        else "ort-cpu"
    )
    major = int(facts.tensorrt_version.split(".")[0]) if facts.tensorrt_version else None
    result = []
    for precision in ("fp32", "fp16", "int8"):
        missing = list(common)
        if precision == "fp16" and facts.platform_fast_fp16 is False:
            missing.append(("fast FP16", "TensorRT reports none on this GPU; build fp32 instead"))
        if precision == "int8" and facts.platform_fast_int8 is False:
            missing.append(("fast INT8", "TensorRT reports none on this GPU; build fp16 instead"))
        notes = []
        if major is not None and major >= 11 and precision != "fp32":
            notes.append(
                f"TensorRT {facts.tensorrt_version} has no precision flags: {precision} builds from the "
                f"bundle's typed {'FP16' if precision == 'fp16' else 'Q/DQ'} ONNX as a strongly typed network"
            )
        if precision == "int8" and (major is None or major < 11):
            # What plan_build does on TensorRT 10 (edge_runtime.engine_from_onnx), in words.
            notes.append(
                "INT8 builds from the bundle's Q/DQ model (model_int8_qdq.onnx, the INT8 graph export "
                "measured); only with 'pneumo edge build --int8-source calibrator', or for a bundle without a "
                "Q/DQ model, does it calibrate model.onnx on the bundle's calibration set (calibration/calib.npy "
                "or a valid calibration cache), never on random data"
            )
        result.append(
            PrecisionReadiness(
                precision,
                not missing,
                tuple(name for name, _ in missing),
                ort_fallback,
                tuple(notes),
                tuple(f"{name}: {fix}" for name, fix in missing),
            )
        )
    return result
