"""Keras .h5 -> ONNX: uint8 input, scaling inside, dynamic batch, parity with Keras, typed errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from export.config import OnnxConfig
from export.errors import ModelLoadError, ParityError, RunFolderError
from export.onnx_from_keras import export_onnx, graph_summary, keras_outputs, load_keras_model
from export.parity import compare_outputs, onnx_outputs, require_parity
from export.run_folder import RunFolder, load_images, parity_images_for
from tests.export.conftest import TinyRun, tiny_keras_model

pytestmark = pytest.mark.tf


def _probe(run: RunFolder, n: int = 8) -> np.ndarray:
    images, _ = parity_images_for(run, n, None)
    return load_images(images, run.contract)


def test_export_parity_uint8_input_dynamic_batch(tiny_run: TinyRun, tmp_path: Path) -> None:
    run = RunFolder.resolve(tiny_run.folder)
    images, source = parity_images_for(run, 16, None)
    batch = load_images(images, run.contract)
    exported = export_onnx(
        run.h5_path, run.contract, run.info, tmp_path / "m.onnx", batch, source, OnnxConfig()
    )

    assert exported.parity.passed and exported.parity.max_abs_diff < 1e-4
    assert exported.parity.n_images == 16 and exported.parity.decision_agreement == 1.0
    assert "test split" in exported.parity.images
    graph = graph_summary(exported.path)
    assert graph["input"] == {"name": "image", "dtype": "uint8", "shape": ["batch", 32, 32, 1]}
    assert graph["output"] == {"name": "probability", "dtype": "float32", "shape": ["batch", 1]}
    assert graph["opset"] == 17

    model = load_keras_model(run.h5_path, run.contract, run.info)
    for n in (1, 5):
        out = onnx_outputs(exported.path, batch[:n])
        assert out.shape == (n, 1)
        np.testing.assert_allclose(out, keras_outputs(model, batch[:n]), atol=1e-4, rtol=0)


def test_scaling_is_inside_the_graph(tiny_onnx: Path, tiny_run: TinyRun) -> None:
    """uint8 pixels into ONNX give what Keras gives on float 0..255 pixels, not on pre-scaled 0..1 pixels."""
    import onnx

    run = RunFolder.resolve(tiny_run.folder)
    batch = _probe(run)
    model = load_keras_model(run.h5_path, run.contract, run.info)
    onnx_out = onnx_outputs(tiny_onnx, batch)
    on_pixels = np.asarray(model(batch.astype(np.float32)))
    on_prescaled = np.asarray(model(batch.astype(np.float32) / 255.0))
    np.testing.assert_allclose(onnx_out, on_pixels, atol=1e-4, rtol=0)
    assert np.abs(onnx_out - on_prescaled).max() > 1e-3
    graph = onnx.load(str(tiny_onnx)).graph
    first = next(node for node in graph.node if "image" in node.input)
    assert first.op_type == "Cast"


def test_simplification_recorded_and_faithful(tiny_run: TinyRun, tmp_path: Path) -> None:
    run = RunFolder.resolve(tiny_run.folder)
    batch = _probe(run, 8)
    plain = export_onnx(
        run.h5_path, run.contract, run.info, tmp_path / "plain.onnx", batch, "t", OnnxConfig(simplify=False)
    )
    slim = export_onnx(run.h5_path, run.contract, run.info, tmp_path / "slim.onnx", batch, "t", OnnxConfig())
    assert not plain.simplified and "disabled" in plain.simplify_note
    # onnxslim is a dependency of the train extra these tests run with: it must have simplified.
    assert slim.simplified, slim.simplify_note
    assert np.array_equal(onnx_outputs(plain.path, batch), onnx_outputs(slim.path, batch))
    assert slim.graph["nodes"] <= plain.graph["nodes"]


def test_parity_failure_names_the_file(tiny_run: TinyRun, tiny_onnx: Path) -> None:
    run = RunFolder.resolve(tiny_run.folder)
    batch = _probe(run)
    reference = onnx_outputs(tiny_onnx, batch)
    result = compare_outputs(
        reference,
        reference + 1e-3,
        run.info,
        reference_name="a",
        candidate_name="b",
        images="t",
        tolerance=1e-4,
    )
    assert not result.passed and result.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(ParityError, match=r"model\.onnx: b differs from a by 1\.0"):
        require_parity(result, tiny_onnx)


def test_not_a_keras_model(tiny_run: TinyRun, tmp_path: Path) -> None:
    import h5py

    run = RunFolder.resolve(tiny_run.folder)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not HDF5 at all")
    with pytest.raises(ModelLoadError, match=r"junk\.h5: not a Keras model"):
        load_keras_model(junk, run.contract, run.info)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as handle:
        handle.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(ModelLoadError, match=r"empty\.h5: not a Keras model"):
        load_keras_model(empty, run.contract, run.info)


def test_model_without_rescaling_is_refused(tiny_run: TinyRun, tmp_path: Path) -> None:
    model = tiny_keras_model(tiny_run.contract, rescaling=False)
    path = tmp_path / "raw.h5"
    model.save(path)
    with pytest.raises(ModelLoadError, match="no Rescaling layer"):
        load_keras_model(path, tiny_run.contract, tiny_run.info)


def test_run_folder_errors_name_the_missing_file(tiny_run: TinyRun, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run.folder, run)
    (run / "contract.json").unlink()
    with pytest.raises(RunFolderError, match=r"contract\.json: missing"):
        RunFolder.resolve(run)
    (run / "model.h5").unlink()
    with pytest.raises(RunFolderError, match=r"model\.h5: model file not found"):
        RunFolder.resolve(run)


def test_moved_data_needs_data_root(tiny_run: TinyRun, tmp_path: Path) -> None:
    """split.json paths (relative and absolute) re-root onto --data when the data set moved."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.folder, run_dir)
    moved = tmp_path / "moved-data"
    shutil.copytree(tiny_run.data, moved)
    split = (run_dir / "split.json").read_text().replace(str(tiny_run.data), str(tmp_path / "gone"))
    (run_dir / "split.json").write_text(split)
    run = RunFolder.resolve(run_dir)
    with pytest.raises(RunFolderError, match="pass --data ROOT"):
        run.split_images("test")
    test = run.split_images("test", data_root=moved)
    train = run.split_images("train", data_root=moved)
    assert all(im.path.is_file() and im.path.is_relative_to(moved) for im in test + train)
    assert test[0].ref.startswith("test/") and train[0].ref.startswith("train/")


def test_a_parity_failure_leaves_the_earlier_output_untouched(tiny_run: TinyRun, tmp_path: Path) -> None:
    run = RunFolder.resolve(tiny_run.folder)
    batch = _probe(run, 8)
    out = tmp_path / "model.onnx"
    export_onnx(run.h5_path, run.contract, run.info, out, batch, "t", OnnxConfig())
    before = out.read_bytes()
    # another opset gives other bytes; a tolerance below float32 rounding fails the real Keras/ORT comparison
    strict = OnnxConfig(opset=15, tolerance=1e-12)
    with pytest.raises(ParityError) as caught:
        export_onnx(run.h5_path, run.contract, run.info, out, batch, "t", strict)
    assert out.read_bytes() == before
    message = str(caught.value)
    assert message.startswith(f"{out}: onnx fp32") and message.endswith(f"({out} was not written)"), message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"], "no temporary file left"

    fresh = tmp_path / "fresh" / "model.onnx"
    with pytest.raises(ParityError):
        export_onnx(run.h5_path, run.contract, run.info, fresh, batch, "t", strict)
    assert not fresh.exists() and not list(fresh.parent.iterdir())
