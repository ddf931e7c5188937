"""The decode cache: one decode per file and contract, then never again; bad files skipped, untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract import PreprocessContract
from edge_runtime.preprocess import preprocess_file
from tests.conftest import write_image
from train.cache import default_cache_dir, load_arrays, store_dir
from train.data import Sample
from train.errors import DataError

LABELS = ("NORMAL", "PNEUMONIA")


def _samples(root: Path, gray_image: np.ndarray, n: int = 6) -> list[Sample]:
    samples = []
    for i in range(n):
        label = LABELS[i % 2]
        path = write_image(root / label / f"img{i}.jpeg", np.roll(gray_image, 11 * i, axis=1))
        samples.append(Sample(path=path, label=label, split="train", patient_id=f"p{i}"))
    return samples


def test_second_load_hits_the_cache(tmp_path: Path, gray_image: np.ndarray) -> None:
    samples = _samples(tmp_path / "data", gray_image)
    contract = PreprocessContract(height=64, width=64)
    cache = tmp_path / "cache"
    first = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    assert first.decoded == 6 and first.from_cache == 0
    assert first.x.shape == (6, 64, 64, 1) and first.x.dtype == np.uint8
    assert first.y.tolist() == [0, 1, 0, 1, 0, 1] and first.y.dtype == np.int64
    second = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    assert second.decoded == 0 and second.from_cache == 6
    assert np.array_equal(first.x, second.x) and second.paths == first.paths
    # a subset in another order is served from the same store, in the order asked
    subset = load_arrays(samples[::-2], LABELS, contract, cache_dir=cache, progress=False)
    assert subset.decoded == 0
    assert np.array_equal(subset.x, first.x[::-2])
    # every row is exactly what the runtime computes
    for row, sample in zip(first.x, samples):
        assert np.array_equal(row, preprocess_file(sample.path, contract))


def test_new_contract_and_new_file_decode_again(tmp_path: Path, gray_image: np.ndarray) -> None:
    samples = _samples(tmp_path / "data", gray_image)
    cache = tmp_path / "cache"
    gray = PreprocessContract(height=64, width=64)
    load_arrays(samples, LABELS, gray, cache_dir=cache, progress=False)
    rgb = PreprocessContract(height=64, width=64, color="rgb")
    assert store_dir(rgb, cache) != store_dir(gray, cache)
    other = load_arrays(samples, LABELS, rgb, cache_dir=cache, progress=False)
    assert other.decoded == 6 and other.x.shape == (6, 64, 64, 3)
    extra = write_image(tmp_path / "data" / "NORMAL" / "new.jpeg", 255 - gray_image)
    more = [*samples, Sample(extra, "NORMAL", "train", "p9")]
    assert load_arrays(more, LABELS, gray, cache_dir=cache, progress=False).decoded == 1


def test_content_not_name_is_the_key(tmp_path: Path, gray_image: np.ndarray) -> None:
    """An edited file under the same name is decoded again (its SHA-256 changed)."""
    samples = _samples(tmp_path / "data", gray_image, n=2)
    cache = tmp_path / "cache"
    contract = PreprocessContract(height=32, width=32)
    before = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    write_image(samples[0].path, np.zeros_like(gray_image))
    after = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    assert after.decoded == 1
    assert after.x[0].max() == 0 and not np.array_equal(before.x[0], after.x[0])


def test_corrupt_files_are_skipped_counted_and_untouched(tmp_path: Path, gray_image: np.ndarray) -> None:
    samples = _samples(tmp_path / "data", gray_image, n=4)
    broken = tmp_path / "data" / "PNEUMONIA" / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    text = tmp_path / "data" / "NORMAL" / "text.jpeg"
    text.write_text("hello")
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (broken, text)}
    bad = [Sample(broken, "PNEUMONIA", "train", "p7"), Sample(text, "NORMAL", "train", "p8")]
    gone = Sample(tmp_path / "data" / "NORMAL" / "gone.jpeg", "NORMAL", "train", "p9")
    cache = tmp_path / "cache"
    contract = PreprocessContract(height=32, width=32)
    arrays = load_arrays([*samples, *bad, gone], LABELS, contract, cache_dir=cache, progress=False)
    assert len(arrays) == 4 and arrays.x.shape[0] == arrays.y.shape[0] == len(arrays.paths) == 4
    reasons = dict(arrays.skipped)
    assert set(reasons) == {str(broken), str(text), str(gone.path)}
    assert "not an image" in reasons[str(text)] and "not found" in reasons[str(gone.path)]
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (broken, text)} == digests
    again = load_arrays([*samples, *bad], LABELS, contract, cache_dir=cache, progress=False)
    assert again.decoded == 0 and len(again.skipped) == 2  # failures are remembered, not retried


def test_manifest_digest_is_the_key(tmp_path: Path, gray_image: np.ndarray) -> None:
    samples = _samples(tmp_path / "data", gray_image, n=2)
    with_digest = [
        Sample(s.path, s.label, s.split, s.patient_id, sha256=hashlib.sha256(s.path.read_bytes()).hexdigest())
        for s in samples
    ]
    cache = tmp_path / "cache"
    contract = PreprocessContract(height=32, width=32)
    load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    assert load_arrays(with_digest, LABELS, contract, cache_dir=cache, progress=False).decoded == 0


def test_missing_shard_is_rebuilt(tmp_path: Path, gray_image: np.ndarray) -> None:
    samples = _samples(tmp_path / "data", gray_image, n=3)
    cache = tmp_path / "cache"
    contract = PreprocessContract(height=32, width=32)
    first = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    for shard in store_dir(contract, cache).glob("shard-*.npy"):
        shard.unlink()
    again = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    assert again.decoded == 3 and np.array_equal(again.x, first.x)


def test_unknown_label_and_empty_input(tmp_path: Path, gray_image: np.ndarray) -> None:
    samples = _samples(tmp_path / "data", gray_image, n=2)
    contract = PreprocessContract(height=32, width=32)
    with pytest.raises(DataError, match="COVID"):
        load_arrays(
            [Sample(samples[0].path, "COVID", "train", "p")], LABELS, contract, cache_dir=tmp_path / "c"
        )
    empty = load_arrays([], LABELS, contract, cache_dir=tmp_path / "c", progress=False)
    assert empty.x.shape == (0, 32, 32, 1) and empty.y.shape == (0,)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("PNEUMO_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "pneumo-edge"
