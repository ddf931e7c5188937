"""The device stamp: real facts of this machine, parsers on fixed text, clock state on a sysfs-shaped tree."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from benchmarks.device_facts import clock_state, collect_device_stamp, cpu_model_and_flags, slugify

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz
flags\t\t: fpu sse avx2 avx512f avx512_vnni
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes asimddp
CPU implementer\t: 0x41
"""


def test_stamp_of_this_machine() -> None:
    facts = collect_device_stamp()
    data = facts.to_dict()
    assert data["cpu_model"]
    assert data["onnxruntime"]  # ONNX Runtime is a runtime dependency
    assert data["versions"]["numpy"] and data["versions"]["opencv"]
    assert "CPUExecutionProvider" in data["onnxruntime_providers_loadable"]
    assert data["cpu_cores_usable"] >= 1
    assert data["slug"] and data["slug"] == slugify(data["slug"])
    # Results are committed: no hostname anywhere in the stamp.
    assert socket.gethostname() not in json.dumps(data)


def test_cpuinfo_parsing() -> None:
    model, flags = cpu_model_and_flags(X86_CPUINFO)
    assert model.startswith("Intel(R) Xeon(R) Platinum 8370C")
    assert {"avx2", "avx512_vnni"} <= flags
    _, arm_flags = cpu_model_and_flags(ARM_CPUINFO)
    assert "asimddp" in arm_flags


def test_slugify() -> None:
    assert slugify("NVIDIA Jetson Orin Nano Developer Kit") == "nvidia-jetson-orin-nano-developer-kit"
    assert slugify("cpu Intel(R) Xeon(R) CPU @ 2.80GHz 2c") == "cpu-intel-xeon-cpu-2-80ghz-2c"
    assert slugify("///") == "unknown-device"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_clock_state_unlocked_and_locked(tmp_path: Path) -> None:
    cpu = tmp_path / "devices/system/cpu/cpu0/cpufreq"
    _write(cpu / "scaling_governor", "schedutil")
    _write(cpu / "scaling_min_freq", "729600")
    _write(cpu / "scaling_max_freq", "2201600")
    _write(cpu / "scaling_cur_freq", "1497600")
    gpu = tmp_path / "class/devfreq/17000000.ga10b"
    _write(gpu / "min_freq", "306000000")
    _write(gpu / "max_freq", "1300500000")
    _write(gpu / "cur_freq", "306000000")
    state = clock_state(tmp_path)
    assert state["cpu_locked"] is False and state["gpu_locked"] is False
    _write(cpu / "scaling_min_freq", "2201600")
    _write(gpu / "min_freq", "1300500000")
    state = clock_state(tmp_path)
    assert state["cpu_locked"] is True and state["gpu_locked"] is True
    assert clock_state(tmp_path / "absent")["cpu_locked"] is None


def test_jetson_stamp_from_runtime_facts() -> None:
    from benchmarks.device_facts import DeviceStamp, device_slug, jetson_facts

    runtime = {
        "jetson_model": "NVIDIA Jetson Orin Nano Developer Kit",
        "l4t_release": "R36.3.0",
        "jetpack": "JetPack 6.x",
        "power_mode": "15W (mode 0)",
    }
    jetson = jetson_facts(runtime)
    assert jetson is not None and jetson["l4t"] == "R36.3.0" and jetson["power_mode"] == "15W (mode 0)"
    facts = DeviceStamp(
        slug="",
        kind="jetson",
        cpu_model="ARMv8",
        cpu_cores_logical=6,
        cpu_cores_usable=6,
        cpu_cores_physical=6,
        cpu_flags=["asimd"],
        memory_total_mb=7620,
        machine="aarch64",
        os="Linux",
        python="3.10",
        jetson=jetson,
    )
    assert device_slug(facts) == "nvidia-jetson-orin-nano-developer-kit"
    assert jetson_facts({"jetson_model": None, "l4t_release": None}) is None
