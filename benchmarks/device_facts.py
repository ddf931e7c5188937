"""The device stamp on every benchmark result: what ran, on what, in which state.

Everything here *reads* the device state and never changes it: no
``jetson_clocks``, no ``nvpmodel -m``, no ``nvidia-smi -lgc``. The stamp is
hostname-free (no hostname, serial numbers, GPU UUIDs or camera list) so
results can be committed. When the clocks are not locked the stamp carries a
warning, because an unlocked CPU or GPU governor makes latency depend on what
ran just before.

GPU, CUDA, TensorRT, ONNX Runtime (which providers really load) and Jetson
facts come from :func:`edge_runtime.device.collect_device_facts`, the same
source as ``pneumo edge doctor`` and the engine keys. This module adds what
only a benchmark needs: CPU model and flags, library versions, the NVIDIA
driver, the raw ``nvpmodel -q`` and ``jetson_clocks --show`` reports, clock
locking, and the device slug used as the results folder name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# CPU flags that decide whether INT8 or FP16 can be fast on a CPU (x86 and ARM spellings).
NOTABLE_CPU_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "bf16",
)
# Distribution names differ by platform (tensorflow-cpu on x86, tensorflow on aarch64, Jetson wheels).
_DISTRIBUTIONS = {
    "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnx": ("onnx",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-libs"),
    "pycuda": ("pycuda",),
    "jetson-stats": ("jetson-stats",),
    "psutil": ("psutil",),
    "pneumo-edge": ("pneumo-edge",),
}
# Fields of edge_runtime's DeviceFacts that identify a machine or do not describe performance.
_RUNTIME_FIELDS_LEFT_OUT = ("cameras", "disk_path", "disk_free_mib", "memory_available_mib")
_COMMAND_TIMEOUT_S = 10.0


@dataclass
class DeviceStamp:
    """Hostname-free facts about the machine a benchmark ran on (not edge_runtime.device.DeviceFacts, which it extends)."""

    slug: str
    kind: str  # "jetson", "gpu" or "cpu"
    cpu_model: str
    cpu_cores_logical: int
    cpu_cores_usable: int
    cpu_cores_physical: int | None
    cpu_flags: list[str]
    memory_total_mb: int | None
    machine: str
    os: str
    python: str
    gpu: str | None = None
    nvidia_driver: str | None = None
    cuda: str | None = None
    tensorrt: str | None = None
    onnxruntime: str | None = None
    onnxruntime_providers_loadable: list[str] = field(default_factory=list)
    onnxruntime_providers_failed: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    clocks: dict[str, Any] = field(default_factory=dict)
    jetson: dict[str, Any] | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_device_stamp() -> DeviceStamp:
    """Read the device state (a few seconds at most; runs no benchmark)."""
    from edge_runtime.device import collect_device_facts as runtime_facts

    runtime = runtime_facts(check_providers=True).to_dict()
    for key in _RUNTIME_FIELDS_LEFT_OUT:
        runtime.pop(key, None)
    cpu_model, flags = cpu_model_and_flags()
    versions = library_versions()
    jetson = jetson_facts(runtime)
    logical = os.cpu_count() or 1
    cuda = runtime.get("cuda_toolkit_version") or (
        f"{runtime['cuda_driver_version']} (driver API)" if runtime.get("cuda_driver_version") else None
    )
    facts = DeviceStamp(
        slug="",
        kind="jetson" if jetson else ("gpu" if runtime.get("gpu_name") else "cpu"),
        cpu_model=cpu_model,
        cpu_cores_logical=logical,
        cpu_cores_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical,
        cpu_cores_physical=_physical_cores(),
        cpu_flags=[flag for flag in NOTABLE_CPU_FLAGS if flag in flags],
        memory_total_mb=runtime.get("memory_total_mib"),
        machine=platform.machine(),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        gpu=runtime.get("gpu_name"),
        nvidia_driver=nvidia_driver_version(),
        cuda=cuda,
        tensorrt=runtime.get("tensorrt_version") or versions.get("tensorrt"),
        onnxruntime=runtime.get("onnxruntime_version") or versions.get("onnxruntime"),
        onnxruntime_providers_loadable=list(runtime.get("onnxruntime_providers") or []),
        onnxruntime_providers_failed=dict(runtime.get("onnxruntime_failed") or {}),
        versions=versions,
        clocks=clock_state(),
        jetson=jetson,
        runtime=runtime,
    )
    facts.slug = device_slug(facts)
    facts.warnings.extend(clock_warnings(facts))
    return facts


def summary_line(device: dict[str, Any]) -> str:
    """One line for a report header, from a device stamp as stored in bench.json."""
    gpu = device.get("gpu") or "no CUDA GPU"
    jetson = device.get("jetson") or {}
    power = f", power mode {jetson.get('power_mode')}" if jetson.get("power_mode") else ""
    return (
        f"{device.get('cpu_model', '?')} ({device.get('cpu_cores_usable', '?')} usable cores), {gpu}{power}; "
        f"ONNX Runtime {device.get('onnxruntime') or 'absent'}, TensorRT {device.get('tensorrt') or 'absent'}, "
        f"CUDA {device.get('cuda') or 'absent'}, driver {device.get('nvidia_driver') or 'absent'}"
    )


def device_slug(facts: DeviceStamp) -> str:
    """Folder name for results: the Jetson model, else the GPU, else the CPU and its core count."""
    if facts.jetson and facts.jetson.get("model"):
        return slugify(str(facts.jetson["model"]))
    if facts.gpu:
        return slugify(facts.gpu)
    return slugify(f"cpu {facts.cpu_model} {facts.cpu_cores_usable}c")


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    slug = re.sub(r"-(r|tm|processor)(?=-|$)", "", slug)
    return slug[:60].strip("-") or "unknown-device"


def cpu_model_and_flags(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (x86 and ARM spellings)."""
    if cpuinfo is None:
        cpuinfo = _read_text("/proc/cpuinfo") or ""
    model = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not model and key in ("model name", "hardware", "cpu model"):
            model = value
        elif not flags and key in ("flags", "features"):
            flags = set(value.split())
    if not model:
        # ARM cores list only "CPU part"; the board model is the useful name there.
        model = _read_text("/proc/device-tree/model") or platform.processor() or platform.machine()
    return model, flags


def library_versions() -> dict[str, str | None]:
    """Installed versions from package metadata: nothing is imported (TensorFlow costs seconds)."""
    versions: dict[str, str | None] = {}
    for name, distributions in _DISTRIBUTIONS.items():
        versions[name] = None
        for dist in distributions:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    if versions["opencv"] is None:
        versions["opencv"] = _module_version("cv2")
    if versions["tensorrt"] is None and importlib.util.find_spec("tensorrt") is not None:
        # JetPack installs TensorRT's bindings as a system package without pip metadata.
        versions["tensorrt"] = _module_version("tensorrt")
    return versions


def nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver (nvidia-smi on desktops and servers; not on Jetson)."""
    out = _command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    if out:
        return out.splitlines()[0].strip()
    text = _read_text("/proc/driver/nvidia/version")
    match = re.search(r"Kernel Module\s+([\d.]+)", text or "")
    return match.group(1) if match else None


def jetson_facts(runtime: dict[str, Any]) -> dict[str, Any] | None:
    """Board, L4T/JetPack, power mode (raw ``nvpmodel -q``) and ``jetson_clocks --show``; None off a Jetson."""
    model = runtime.get("jetson_model")
    if not runtime.get("l4t_release") and not (model and "jetson" in str(model).lower()):
        return None
    return {
        "model": model,
        "l4t": runtime.get("l4t_release"),
        "jetpack": runtime.get("jetpack"),
        "power_mode": runtime.get("power_mode"),
        "nvpmodel_q": _command(["nvpmodel", "-q"]),
        # Needs root on most L4T releases; the sysfs clock state in `clocks` does not.
        "jetson_clocks_show": _command(["jetson_clocks", "--show"]),
    }


def clock_state(sysfs: Path = Path("/sys")) -> dict[str, Any]:
    """Whether CPU (and Jetson GPU) clocks are pinned: min == max frequency, or the performance governor."""
    cpus = []
    for cpu in sorted((sysfs / "devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
        cpus.append(
            {
                "cpu": cpu.parent.name,
                "governor": _read_text(cpu / "scaling_governor"),
                "min_khz": _to_int(_read_text(cpu / "scaling_min_freq")),
                "max_khz": _to_int(_read_text(cpu / "scaling_max_freq")),
                "cur_khz": _to_int(_read_text(cpu / "scaling_cur_freq")),
            }
        )
    gpus = []
    for devfreq in sorted((sysfs / "class/devfreq").glob("*")):
        name = (_read_text(devfreq / "device/of_node/name") or devfreq.name).lower()
        if "gpu" in name or re.search(r"g[apv]\d+b", devfreq.name):
            gpus.append(
                {
                    "device": devfreq.name,
                    "governor": _read_text(devfreq / "governor"),
                    "min_hz": _to_int(_read_text(devfreq / "min_freq")),
                    "max_hz": _to_int(_read_text(devfreq / "max_freq")),
                    "cur_hz": _to_int(_read_text(devfreq / "cur_freq")),
                }
            )
    cpu_locked = (
        all(c["governor"] == "performance" or (c["min_khz"] and c["min_khz"] == c["max_khz"]) for c in cpus)
        if cpus
        else None
    )
    gpu_locked = all(g["min_hz"] and g["min_hz"] == g["max_hz"] for g in gpus) if gpus else None
    return {"cpu_locked": cpu_locked, "gpu_locked": gpu_locked, "cpus": cpus, "gpu_devfreq": gpus}


def clock_warnings(facts: DeviceStamp) -> list[str]:
    warnings = []
    clocks = facts.clocks
    hint = "'sudo jetson_clocks'" if facts.jetson else "the 'performance' CPU governor"
    if clocks.get("cpu_locked") is False:
        governors = sorted({c["governor"] for c in clocks.get("cpus", []) if c["governor"]})
        warnings.append(
            f"CPU clocks are not locked (governor {', '.join(governors) or '?'}): latency varies with load; "
            f"for stable numbers use {hint} (this benchmark never changes it)"
        )
    elif clocks.get("cpu_locked") is None:
        facts.notes.append(
            "CPU frequency scaling is not visible here (virtual machine?): clock locking unknown"
        )
    if clocks.get("gpu_locked") is False:
        warnings.append(
            "GPU clocks are not locked (devfreq min != max): run 'sudo jetson_clocks' for stable numbers "
            "(this benchmark never changes it)"
        )
    if facts.gpu and not facts.jetson:
        facts.notes.append(
            "desktop/server GPU clock locking is not read (nvidia-smi -lgc state is not queried)"
        )
    return warnings


def _physical_cores() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    cores = psutil.cpu_count(logical=False)
    return int(cores) if cores else None


def _module_version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken optional install is reported as absent
        return None
    version = getattr(module, "__version__", None)
    return str(version) if version else None


def _command(argv: list[str]) -> str | None:
    """stdout of a read-only query command, or None when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def _read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def _to_int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text not in (None, "", "[N/A]") else None
    except ValueError:
        return None
