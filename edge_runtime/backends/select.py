"""Choose and create a backend for a bundle: ``--backend auto`` or a named one.

``auto`` tries, fastest first: a TensorRT engine built for this device in the
bundle (``trt``), ONNX Runtime's TensorRT execution provider (``ort-trt``), its
CUDA provider (``ort-cuda``), its CPU provider (``ort-cpu``). Each candidate is
actually opened (for ONNX Runtime that means ``session.get_providers()`` shows
the provider loaded, not just that it is listed), the first that opens wins,
and the choice and the reason every faster one was skipped are logged and
returned (:class:`BackendChoice`). A named backend that cannot run is an
error, never a silent fallback.

ONNX Runtime on an accelerator (``ort-trt``, ``ort-cuda``) must also pass the
bundle's golden set before it classifies images (:func:`golden_gate`, the rule
export and ``pneumo edge build`` apply): ``ort-trt`` builds a TensorRT engine
of its own from the ONNX, and neither provider's numerics were measured by
export. ``auto`` skips one that fails, saying why; a named one is refused.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.backends.base import BACKEND_CHOICES, BACKEND_NAMES, Backend
from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.bundle import GOLDEN_DIR, ONNX_FOR_PRECISION, Bundle
from edge_runtime.errors import (
    BackendUnavailableError,
    BundleError,
    ContractError,
    EdgeError,
    EngineMismatchError,
)

log = logging.getLogger(__name__)

AUTO_ORDER = BACKEND_NAMES
#: Backends that must reproduce the bundle's golden set each time they are selected. Not ort-cpu:
#: it is the runtime export measured the model with (its golden outputs come from it), so checking
#: it again would only add start-up time. Not trt: its engine's self-test is recorded by
#: 'pneumo edge build' and checked from the sidecar (engine_sidecar.self_test_problem).
GOLDEN_GATED_BACKENDS: frozenset[str] = frozenset({"ort-trt", "ort-cuda"})


@dataclass
class BackendChoice:
    """The backend chosen (unopened) and why each faster candidate was skipped."""

    backend: Backend
    name: str
    precision: str
    skipped: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        text = f"backend {self.name} ({self.precision})"
        if self.skipped:
            text += "; skipped " + "; ".join(
                f"{name} ({_short(name, why)})" for name, why in self.skipped.items()
            )
        return text


def _short(name: str, why: str) -> str:
    """First clause of a skip reason, without a repeated backend name, for one log line."""
    why = why.removeprefix(f"{name}: ")
    return why.split("; ")[0]


def rebuild_command(bundle: Bundle, precision: str, dla_core: int | None = None) -> str:
    """The command that (re)builds the engine ``trt`` looks for."""
    dla = f" --dla {dla_core}" if dla_core is not None else ""
    return f"pneumo edge build {shlex.quote(str(bundle.root))} --precision {precision}{dla}"


def _tensorrt_backend(bundle: Bundle, precision: str, dla_core: int | None = None) -> Backend:
    from edge_runtime.backends.tensorrt import TensorRTBackend
    from edge_runtime.device import device_key, tensorrt_and_gpu
    from edge_runtime.engine_sidecar import EngineSidecar, engine_files, self_test_problem

    trt_version, gpu = tensorrt_and_gpu()
    key = device_key(gpu.name, gpu.compute_capability, trt_version)
    files = engine_files(bundle.engines_dir, key, precision, dla_core)
    command = rebuild_command(bundle, precision, dla_core)
    if not files.engine.is_file():
        built = (
            sorted(p.name for p in (bundle.engines_dir / key).glob("*.engine"))
            if (bundle.engines_dir / key).is_dir()
            else []
        )
        dla_hint = _dla_hint(built, precision) if dla_core is None else ""
        raise BackendUnavailableError(
            f"trt: no {precision} engine{'' if dla_core is None else f' for DLA core {dla_core}'} "
            f"for this device ({key}) in {bundle.engines_dir}"
            + (f" (built here: {', '.join(built)})" if built else "")
            + (dla_hint or f"; build it with: {command}")
        )
    sidecar = EngineSidecar.load(files.sidecar)
    if sidecar.dla_core != dla_core:
        raise EngineMismatchError(
            f"{files.engine}: its sidecar says it runs on {_placement(sidecar.dla_core)}, "
            f"{_placement(dla_core)} was "
            f"asked for (a renamed or copied engine?); refusing it. Rebuild it with: {command}"
        )
    if problem := self_test_problem(sidecar, bundle.golden_sha256()):
        raise EngineMismatchError(
            f"{files.engine}: refusing to classify images with this engine: {problem}. Run "
            f"{command} and read its self-test line"
        )
    if (
        sidecar.onnx_file not in ONNX_FOR_PRECISION.values()
        or not (bundle.root / sidecar.onnx_file).is_file()
    ):
        # Without the ONNX file its sidecar names, nothing ties this engine to this bundle's model.
        raise EngineMismatchError(
            f"{files.engine}: its sidecar says it was built from {sidecar.onnx_file!r}, which is not one of "
            f"this bundle's model files ({', '.join(ONNX_FOR_PRECISION[p] for p in bundle.precisions)}); refusing to run an engine "
            f"of unknown origin. Rebuild it with: {command}"
        )
    return TensorRTBackend(
        files.engine,
        expected_onnx_sha256=bundle.file_sha256(sidecar.onnx_file),
        rebuild_command=command,
        expected_precision=precision,
        expected_item_shape=bundle.contract.input_shape,
    )


def _placement(dla_core: int | None) -> str:
    return "the GPU" if dla_core is None else f"DLA core {dla_core}"


def _dla_hint(built: list[str], precision: str) -> str:
    """Point at ``--dla N`` when the only engine for this precision was built for a DLA core."""
    for name in built:
        stem = name.removesuffix(".engine")
        prefix = f"model_{precision}_dla"
        if stem.startswith(prefix) and stem[len(prefix) :].isdigit():
            return f"; that engine runs on DLA core {stem[len(prefix) :]}: add --dla {stem[len(prefix) :]}"
    return ""


def _onnxruntime_backend(bundle: Bundle, name: str, precision: str, threads: int) -> Backend:
    options: dict[str, Any] = {}
    model = bundle.onnx_path(precision)
    if name == "ort-trt":
        if precision == "fp16":
            # The EP takes FP16 as a flag on the FP32 graph, like TensorRT 10's builder.
            model = bundle.onnx_path("fp32")
            options["trt_fp16_enable"] = True
        elif precision == "int8":
            options["trt_int8_enable"] = True  # explicit Q/DQ scales from model_int8_qdq.onnx
        # The TensorRT EP builds its own engine from the ONNX; cache it beside ours so the next
        # start does not rebuild it (minutes on a Jetson). ONNX Runtime does not invalidate that
        # cache when the model changes, so each model file and precision gets a folder of its own.
        model_sha = bundle.file_sha256(model.relative_to(bundle.root).as_posix())
        cache = bundle.engines_dir / "onnxruntime-trt" / f"{precision}-{model_sha[:16]}"
        options.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(cache),
            trt_timing_cache_enable=True,
            trt_timing_cache_path=str(cache),
        )
    backend = OnnxRuntimeBackend(
        model,
        name=name,
        precision=precision,
        threads=threads,
        provider_options=options,
        expected_item_shape=bundle.contract.input_shape,
    )
    return backend


def golden_gate(backend: Backend, bundle: Bundle, precision: str) -> str | None:
    """Open ``backend``, run the bundle's golden set through it, close it: None when it passes.

    Otherwise the reason it must not classify images: the largest output difference
    against the tolerance and the files whose decision flipped, or why the golden set
    cannot be run (a bundle without one cannot vouch for an unmeasured provider).
    Errors opening or running the backend propagate as they are, so a provider that
    does not load, or a model that does not fit the contract, reads as before.
    """
    from edge_runtime.golden import GoldenSet, compare_golden, run_golden

    # The provider is opened first so that one which cannot load here says so, as without the gate.
    # The caller opens the backend again to classify: a second session, which for ort-trt reuses
    # the engine cache the first one wrote.
    with backend:
        try:
            golden = GoldenSet.load(
                bundle.root / GOLDEN_DIR, bundle.contract.input_shape, bundle.info.threshold
            )
        except BundleError as exc:
            return f"cannot be checked against the bundle's golden set ({exc})"
        outputs = run_golden(backend, golden)
    try:
        comparison = compare_golden(outputs, golden, bundle.info, precision)
    except BundleError as exc:  # golden.json has no tolerance for this precision
        return f"cannot be checked against the bundle's golden set ({exc})"
    failure = comparison.failure()
    if failure is not None:
        # commas only: BackendChoice.describe shows a skip reason up to its first "; "
        return (
            f"failed the bundle's golden self-test ({failure.replace('; ', ', ')}, on {comparison.n} images)"
        )
    log.info(
        "%s %s passed the golden set: max |diff| %.3g <= tolerance %.3g on %d images",
        backend.name,
        precision,
        comparison.max_abs_diff,
        comparison.tolerance,
        comparison.n,
    )
    return None


def _golden_refusal(bundle: Bundle, name: str, precision: str, problem: str) -> EngineMismatchError:
    return EngineMismatchError(
        f"{bundle.root}: refusing to classify images with --backend {name} ({precision}): it {problem}, "
        "and the golden set is the check export and 'pneumo edge build' apply to every runtime. Use "
        f"--backend ort-cpu (the runtime export measured), or build and self-test a TensorRT engine with "
        f"{rebuild_command(bundle, precision)} and use --backend trt"
    )


def _make(bundle: Bundle, name: str, precision: str, threads: int, dla_core: int | None) -> Backend:
    if name == "trt":
        return _tensorrt_backend(bundle, precision, dla_core)
    if dla_core is not None:
        raise BackendUnavailableError(
            f"--dla {dla_core}: DLA cores run TensorRT engines only; use --backend trt (or auto)"
        )
    return _onnxruntime_backend(bundle, name, precision, threads)


def select_backend(
    bundle: Bundle,
    backend: str = "auto",
    precision: str = "fp32",
    threads: int = 0,
    dla_core: int | None = None,
    golden_gated: Collection[str] = GOLDEN_GATED_BACKENDS,
) -> BackendChoice:
    """Pick a backend that really loads here; return it unopened with the reasons for skipped ones.

    ``dla_core`` asks for the engine built with ``pneumo edge build --dla N``; it
    rules out every ONNX Runtime backend, so ``auto`` then means ``trt`` only.
    Backends named in ``golden_gated`` are opened and must pass :func:`golden_gate`
    first; ``pneumo edge build`` passes none, since it runs and reports that test itself.
    """
    if backend not in BACKEND_CHOICES:
        raise BackendUnavailableError(
            f"unknown backend {backend!r}: expected one of {', '.join(BACKEND_CHOICES)}"
        )
    if backend != "auto":
        chosen = _make(bundle, backend, precision, threads, dla_core)
        if backend in golden_gated and (problem := golden_gate(chosen, bundle, precision)):
            raise _golden_refusal(bundle, backend, precision, problem)
        return BackendChoice(chosen, backend, precision)
    skipped: dict[str, str] = {}
    for name in AUTO_ORDER if dla_core is None else ("trt",):
        try:
            candidate = _make(bundle, name, precision, threads, dla_core)
            if name in golden_gated:
                problem = golden_gate(candidate, bundle, precision)
            else:
                candidate.open()
                candidate.close()
                problem = None
        except (BundleError, ContractError):
            raise  # the bundle itself is wrong: no other backend can fix that
        except EdgeError as exc:
            skipped[name] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a provider failing to load in any way means "skip it"
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        if problem is not None:
            skipped[name] = problem
            continue
        choice = BackendChoice(candidate, name, precision, skipped)
        log.info("backend auto -> %s", choice.describe())
        return choice
    raise BackendUnavailableError(
        f"no backend can run the {precision} model here: "
        + "; ".join(f"{n}: {why}" for n, why in skipped.items())
    )


def create_backend(
    bundle: Bundle,
    backend: str = "auto",
    precision: str = "fp32",
    threads: int = 0,
    dla_core: int | None = None,
    golden_gated: Collection[str] = GOLDEN_GATED_BACKENDS,
) -> Backend:
    """Return an unopened backend for ``bundle``; use it as a context manager.

    With ``backend="auto"`` the fastest one that loads here (see :func:`select_backend`).
    """
    return select_backend(bundle, backend, precision, threads, dla_core, golden_gated).backend
