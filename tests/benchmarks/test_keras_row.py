"""The Keras reference row with a real (tiny) Keras model saved as .h5."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.report import threads_line
from benchmarks.run import BenchConfig, run_benchmark
from edge_runtime.bundle import write_manifest
from tests.benchmarks.test_run import labelled_folder

pytestmark = [
    pytest.mark.tf,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]


def save_keras_twin(run: Path, bundle: Path, side: int = 32) -> Path:
    """A Keras model computing what the tiny ONNX model computes: sigmoid(8 * (mean(x / 255) - 0.5))."""
    import keras

    inputs = keras.Input((side, side, 1))
    x = keras.layers.Rescaling(1 / 255, offset=-0.5)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([np.array([[8.0]], np.float32), np.array([0.0], np.float32)])
    run.mkdir(parents=True, exist_ok=True)
    model.save(run / "model.h5")
    (run / "contract.json").write_bytes((bundle / "contract.json").read_bytes())
    return run


def test_keras_reference_row(tiny_bundle: Path, tmp_path: Path) -> None:
    run = save_keras_twin(tmp_path / "runs" / "tiny", tiny_bundle)
    # The bundle's model card names its run folder: no --keras needed.
    (tiny_bundle / "model_card.json").write_text(json.dumps({"arch": "tiny", "run_dir": str(run)}))
    write_manifest(tiny_bundle)
    data = labelled_folder(tmp_path / "test", per_class=3)
    config = BenchConfig(
        bundle=tiny_bundle,
        backends=("ort-cpu", "keras"),
        precisions=("fp32", "fp16"),
        batches=(1, 2),
        iterations=10,
        warmup_s=0.0,
        data=data,
        bootstrap=10,
        cold_start_repeats=1,
        threads=1,
        progress=False,
    )
    document = run_benchmark(config)

    keras_rows = [r for r in document["rows"] if r["backend"] == "keras"]
    assert [r["batch"] for r in keras_rows] == [1, 2]
    assert keras_rows[0]["device"] == "cpu" and keras_rows[0]["model_file"].endswith("model.h5")
    ort = next(r for r in document["rows"] if r["backend"] == "ort-cpu" and r["batch"] == 1)
    assert ort["speedup_vs_keras"] == pytest.approx(
        ort["throughput_ips"] / keras_rows[0]["throughput_ips"], rel=1e-2
    )
    assert keras_rows[0]["speedup_vs_keras"] == 1.0
    tf_threads = keras_rows[0]["threads"]
    assert tf_threads["runtime"] == "tensorflow" and tf_threads["requested"] == 1
    if tf_threads["note"]:  # TensorFlow already ran in this pytest process: said, not hidden
        assert "not applied" in tf_threads["note"] and tf_threads["note"] in keras_rows[0]["warnings"]
    else:
        assert tf_threads["intra_op_threads"] == 1
    assert "tensorflow intra-op" in threads_line(document) and "onnxruntime intra-op 1," in threads_line(
        document
    )

    accuracy = {a["backend"]: a for a in document["accuracy"]}
    assert accuracy["keras"]["accuracy"] == 1.0 and accuracy["ort-cpu"]["accuracy"] == 1.0
    assert accuracy["ort-cpu"]["agreement"]["reference"] == "keras fp32"
    assert accuracy["ort-cpu"]["agreement"]["max_abs_probability_diff"] < 1e-4

    cold = {c["backend"]: c for c in document["cold_start"]}
    assert "error" not in cold["keras"], cold["keras"]
    assert cold["keras"]["cold_start_s"] > cold["keras"]["first_inference_s"] > 0
    assert cold["keras"]["versions"]  # TensorFlow's version from the child
    targets = {t["key"]: t for t in document["targets"]}
    for key in ("cpu_ort_fp32_vs_keras_b1", "cold_start_vs_tensorflow", "peak_memory_vs_tensorflow"):
        # "met"/"missed", with "(unstable timing)" where this shared machine disturbed 10 calls
        assert targets[key]["status"].split(" (")[0] in ("met", "missed") and targets[key]["ratio"] > 0
    skipped = {(s["backend"], s["precision"]): s["reason"] for s in document["skipped"]}
    assert "not a Keras precision" in skipped[("keras", "fp16")]


def test_keras_model_of_another_shape_is_skipped_with_the_reason(tiny_bundle: Path, tmp_path: Path) -> None:
    run = save_keras_twin(tmp_path / "runs" / "other", tiny_bundle, side=48)
    config = BenchConfig(
        bundle=tiny_bundle,
        backends=("keras",),
        precisions=("fp32",),
        batches=(1,),
        iterations=10,
        warmup_s=0.0,
        keras=run,
        accuracy=False,
        cold_start_repeats=0,
        progress=False,
    )
    document = run_benchmark(config)
    assert document["rows"] == []
    reason = next(s["reason"] for s in document["skipped"] if s["backend"] == "keras")
    assert "does not match the bundle contract" in reason
