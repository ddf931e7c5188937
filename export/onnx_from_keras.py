"""Keras ``.h5`` -> ONNX that takes uint8 NHWC pixels, with the scaling inside the graph.

``tf2onnx.convert.from_keras`` fails under Keras 3 (tensorflow-onnx issues 2329
and 2348: KeyError even with an input signature), so the model is wrapped in a
``tf.function`` whose signature is ``uint8 [None, H, W, C]``: it casts to
float32 and calls the model, whose first layer is ``Rescaling(scale,
offset)``. The ONNX graph therefore starts with ``Cast`` and the scaling, has
a dynamic batch dimension, and no runtime can forget to scale.

Graph simplification (onnxslim) is kept only when it changes nothing: its
outputs must equal the unsimplified graph's exactly on the parity images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.contract import ModelInfo, PreprocessContract
from edge_runtime.fileio import atomic_write_bytes, atomic_write_via, sha256_file
from export.config import OnnxConfig
from export.errors import ConversionError, ExportError, MissingDependencyError, ModelLoadError, ParityError
from export.parity import ParityResult, compare_outputs, onnx_outputs, require_parity

BATCH_DIM = "batch"
# The ONNX metadata key holding the preprocessing contract (JSON), for an ONNX file without contract.json beside it.
CONTRACT_METADATA_KEY = "pneumo.contract"
# What converting a Keras model imports: Keras loads it, tf2onnx traces it through TensorFlow, onnx checks it.
CONVERSION_MODULES = ("keras", "tensorflow", "tf2onnx", "onnx")


def require_modules(what: str, modules: tuple[str, ...] = CONVERSION_MODULES) -> None:
    """MissingDependencyError with the install command when any of ``modules`` is missing.

    Export steps call it before reading the run or creating an output, so the lean edge install
    fails at once with the fix instead of a traceback from ``import keras`` half way through.
    """
    from edge_runtime.extras import missing_message, missing_modules

    missing = missing_modules(modules)
    if missing:
        raise MissingDependencyError(missing_message(what, missing, "train"))


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how it was checked."""

    path: Path
    sha256: str
    bytes: int
    opset: int
    simplified: bool
    simplify_note: str
    parity: ParityResult
    graph: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "opset": self.opset,
            "simplified": self.simplified,
            "simplify_note": self.simplify_note,
            "checker": "passed",
            "graph": self.graph,
            "parity": self.parity.to_dict(),
        }


def load_keras_model(h5_path: Path, contract: PreprocessContract, info: ModelInfo) -> Any:
    """Load with safe mode (no arbitrary code from the file) and check it matches its contract."""
    require_modules(f"loading {h5_path}", ("keras", "tensorflow"))
    import keras

    try:
        model = keras.models.load_model(h5_path, safe_mode=True, compile=False)
    except (ValueError, OSError, TypeError, KeyError, AttributeError, ImportError) as exc:
        raise ModelLoadError(
            f"{h5_path}: not a Keras model that safe mode can load ({type(exc).__name__}: {exc}); "
            "export needs the model.h5 'pneumo train' saved (built-in layers only)"
        ) from exc
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{h5_path}: holds a {type(model).__name__}, not a Keras model")
    expected_in = (None, *contract.input_shape)
    if tuple(model.input_shape) != expected_in:
        raise ModelLoadError(
            f"{h5_path}: model input {tuple(model.input_shape)} does not match contract.json {expected_in}; "
            "the contract beside the model must be the one it was trained with"
        )
    if tuple(model.output_shape) != (None, info.n_outputs):
        raise ModelLoadError(
            f"{h5_path}: model output {tuple(model.output_shape)} does not match model_info.json "
            f"({info.head} head, {info.n_outputs} output(s))"
        )
    _check_rescaling(model, contract, h5_path)
    return model


def _check_rescaling(model: Any, contract: PreprocessContract, h5_path: Path) -> None:
    """The contract says the graph scales uint8 pixels; a model without that layer would be fed 0..255 raw."""
    import keras

    rescaling = [layer for layer in model.layers if isinstance(layer, keras.layers.Rescaling)]
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not rescaling and nested:
        # an ensemble ('pneumo train ensemble'): every member scales its own input
        for member in nested:
            _check_rescaling(member, contract, h5_path)
        return
    if not rescaling:
        raise ModelLoadError(
            f"{h5_path}: no Rescaling layer; the contract puts the scaling x*{contract.scale:.6g}+{contract.offset:g} "
            "inside the model, so an exported graph without it would see raw 0..255 pixels"
        )
    layer = rescaling[0]
    scale, offset = float(np.ravel(layer.scale)[0]), float(np.ravel(layer.offset)[0])
    if not (np.isclose(scale, contract.scale, rtol=1e-6) and np.isclose(offset, contract.offset, atol=1e-7)):
        raise ModelLoadError(
            f"{h5_path}: Rescaling layer does x*{scale:.6g}+{offset:g} but contract.json says "
            f"x*{contract.scale:.6g}+{contract.offset:g}"
        )


def keras_outputs(model: Any, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The Keras reference: uint8 pixels as float32 0..255 (the model's first layer scales them)."""
    chunks = [
        np.asarray(model(batch[i : i + batch_size].astype(np.float32), training=False), dtype=np.float32)
        for i in range(0, len(batch), batch_size)
    ]
    return np.concatenate(chunks, axis=0).reshape(len(batch), -1)


def onnx_from_keras(model: Any, contract: PreprocessContract, info: ModelInfo, config: OnnxConfig) -> Any:
    """Convert to an ``onnx.ModelProto``: uint8 ``[batch, H, W, C]`` in, float32 ``[batch, K]`` out."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *contract.input_shape), tf.uint8, name=config.input_name),)

    @tf.function(input_signature=spec)
    def uint8_model(image: Any) -> dict[str, Any]:
        return {config.output_name: model(tf.cast(image, tf.float32), training=False)}

    try:
        proto, _ = tf2onnx.convert.from_function(uint8_model, input_signature=spec, opset=config.opset)
    except Exception as exc:  # tf2onnx raises bare Exceptions from its rewriters; wrapped, not swallowed
        raise ConversionError(
            f"tf2onnx could not convert the model ({type(exc).__name__}: {exc}); try another --opset "
            f"(now {config.opset}), or replace the layer the message names"
        ) from exc
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    proto.doc_string = f"pneumo-edge {info.model_version}: uint8 NHWC in, scaling inside, {info.head} out"
    metadata = {
        "pneumo.model_version": info.model_version,
        CONTRACT_METADATA_KEY: json.dumps(contract.to_dict(), sort_keys=True),
        "pneumo.labels": json.dumps(list(info.labels)),
        "pneumo.synthetic": str(info.synthetic).lower(),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(
            f"the converted graph fails onnx.checker ({exc}); a converter fault, not the model's: try another "
            f"--opset (now {config.opset})"
        ) from exc
    return proto


def save_onnx(proto: Any, path: Path) -> Path:
    """Serialize atomically: a reader never sees half a model."""
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def simplify_if_identical(proto: Any, path: Path, probe: np.ndarray) -> tuple[Any, bool, str]:
    """Return onnxslim's graph only if its outputs equal the original's exactly on ``probe`` (batch 1 and N)."""
    import onnx

    try:
        import onnxslim
    except ImportError:
        return proto, False, "onnxslim not installed; graph kept as converted"
    try:
        slim = onnxslim.slim(onnx.ModelProto.FromString(proto.SerializeToString()))
        onnx.checker.check_model(slim, full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnxslim surfaces arbitrary errors from its passes
        return proto, False, f"onnxslim failed ({type(exc).__name__}: {exc}); graph kept as converted"
    if [i.name for i in slim.graph.input] != [i.name for i in proto.graph.input] or [
        o.name for o in slim.graph.output
    ] != [o.name for o in proto.graph.output]:
        return proto, False, "onnxslim renamed inputs or outputs; graph kept as converted"
    for value in (*slim.graph.input, *slim.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    candidate = path.with_name(f".{path.name}.slim-check")
    reference = path.with_name(f".{path.name}.ref-check")
    try:
        save_onnx(slim, candidate)
        save_onnx(proto, reference)
        for batch in (probe[:1], probe):
            if not np.array_equal(onnx_outputs(reference, batch), onnx_outputs(candidate, batch)):
                return proto, False, "onnxslim changed the outputs numerically; graph kept as converted"
    finally:
        candidate.unlink(missing_ok=True)
        reference.unlink(missing_ok=True)
    removed = len(proto.graph.node) - len(slim.graph.node)
    return slim, True, f"onnxslim {onnxslim.__version__}: {removed} nodes removed, outputs identical"


def graph_summary(path: Path) -> dict[str, Any]:
    """Names, element types and shapes of the graph's input and output; node and op counts."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        return {
            "name": value.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            "shape": dims,
        }

    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "input": describe(model.graph.input[0]),
        "output": describe(model.graph.output[0]),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items())),
    }


def export_onnx(
    h5_path: Path,
    contract: PreprocessContract,
    info: ModelInfo,
    output: Path,
    parity_batch: np.ndarray,
    parity_source: str,
    config: OnnxConfig,
) -> OnnxExport:
    """Load, convert, check, optionally simplify, save, and compare with Keras on ``parity_batch``.

    Raises :class:`ParityError` when ONNX Runtime's outputs differ from Keras's by more than
    ``config.tolerance``; ``output`` is then left as it was (absent, or an earlier export).
    """
    require_modules("ONNX conversion")
    if len(parity_batch) == 0:
        raise ExportError("no images for the parity check; pass --data ROOT with labelled images")
    model = load_keras_model(h5_path, contract, info)
    try:
        proto = onnx_from_keras(model, contract, info, config)
    except ConversionError as exc:
        raise ConversionError(f"{h5_path}: {exc}") from exc
    note = "simplification disabled (--no-simplify)"
    simplified = False
    if config.simplify:
        proto, simplified, note = simplify_if_identical(
            proto, output, parity_batch[: min(8, len(parity_batch))]
        )
    reference = keras_outputs(model, parity_batch)
    checked: list[ParityResult] = []

    def save_if_faithful(candidate: Path) -> None:
        # checked at a temporary path: a graph that fails parity never replaces an earlier -o
        candidate.write_bytes(proto.SerializeToString())
        result = compare_outputs(
            reference,
            onnx_outputs(candidate, parity_batch),
            info,
            reference_name="keras fp32",
            candidate_name="onnx fp32 (onnxruntime cpu)",
            images=parity_source,
            tolerance=config.tolerance,
        )
        require_parity(result, output)
        checked.append(result)

    try:
        atomic_write_via(output, save_if_faithful)
    except ParityError as exc:
        raise ParityError(f"{exc} ({output} was not written)") from exc
    result = checked[0]
    return OnnxExport(
        path=output,
        sha256=sha256_file(output),
        bytes=output.stat().st_size,
        opset=config.opset,
        simplified=simplified,
        simplify_note=note,
        parity=result,
        graph=graph_summary(output),
    )
