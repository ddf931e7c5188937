"""The decode cache: one decode per file and contract, then never again; bad files skipped, untouched."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

import train.cache as cache_module
from edge_runtime.contract import PreprocessContract
from edge_runtime.preprocess import preprocess_file
from tests.conftest import write_image
from train.cache import load_arrays, store_dir
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


def _with_digest(sample: Sample, sha256: str) -> Sample:
    return Sample(sample.path, sample.label, sample.split, sample.patient_id, sha256=sha256)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_correct_manifest_digest_shares_the_entry(tmp_path: Path, gray_image: np.ndarray) -> None:
    samples = _samples(tmp_path / "data", gray_image, n=2)
    with_digest = [_with_digest(s, _sha(s.path)) for s in samples]
    cache = tmp_path / "cache"
    contract = PreprocessContract(height=32, width=32)
    load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    assert load_arrays(with_digest, LABELS, contract, cache_dir=cache, progress=False).decoded == 0


def test_a_replaced_file_is_decoded_again_though_the_manifest_is_stale(
    tmp_path: Path, gray_image: np.ndarray
) -> None:
    """The manifest digest is a claim; the pixels are always those of the bytes on disk."""
    samples = [_with_digest(s, _sha(s.path)) for s in _samples(tmp_path / "data", gray_image, n=2)]
    cache = tmp_path / "cache"
    contract = PreprocessContract(height=32, width=32)
    before = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    write_image(samples[0].path, 255 - gray_image)  # MANIFEST.csv (samples[0].sha256) not updated
    after = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    assert after.decoded == 1 and after.from_cache == 1
    assert np.array_equal(after.x[0], preprocess_file(samples[0].path, contract))
    assert not np.array_equal(after.x[0], before.x[0])


def test_a_file_that_failed_is_retried_once_replaced(tmp_path: Path, gray_image: np.ndarray) -> None:
    path = tmp_path / "data" / "NORMAL" / "IM-0001-0001.jpeg"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 a truncated download")
    sample = Sample(path, "NORMAL", "test", "IM-0001", sha256=_sha(path))
    cache = tmp_path / "cache"
    contract = PreprocessContract(height=32, width=32)
    first = load_arrays([sample], LABELS, contract, cache_dir=cache, progress=False)
    assert len(first) == 0 and len(first.skipped) == 1
    write_image(path, gray_image)  # downloaded again; the manifest row still names the broken bytes
    again = load_arrays([sample], LABELS, contract, cache_dir=cache, progress=False)
    assert len(again) == 1 and again.skipped == [] and again.decoded == 1
    assert np.array_equal(again.x[0], preprocess_file(path, contract))


def test_a_fresh_cache_stores_each_files_own_pixels(tmp_path: Path, gray_image: np.ndarray) -> None:
    """A manifest row claiming another file's digest must not make two files share one entry."""
    a, b = _samples(tmp_path / "data", gray_image, n=2)
    wrong = [_with_digest(a, _sha(a.path)), _with_digest(b, _sha(a.path))]
    contract = PreprocessContract(height=32, width=32)
    arrays = load_arrays(wrong, LABELS, contract, cache_dir=tmp_path / "cache", progress=False)
    assert arrays.decoded == 2
    for row, sample in zip(arrays.x, wrong, strict=True):
        assert np.array_equal(row, preprocess_file(sample.path, contract))


def test_unchanged_files_are_not_read_again(
    tmp_path: Path, gray_image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stamp (size, mtime, ctime, inode) beside each digest spares re-hashing a data set every run."""
    samples = _samples(tmp_path / "data", gray_image, n=4)
    cache = tmp_path / "cache"
    contract = PreprocessContract(height=32, width=32)
    # Files written a moment ago may change again within one timestamp tick: hashed until older.
    # (An hour's window: a stall of the test machine past the real 2 s must not make them "old".)
    monkeypatch.setattr(cache_module, "RACY_NS", 3600 * 1_000_000_000)
    assert load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False).hashed == 4
    again = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    assert again.hashed == 4 and again.decoded == 0
    monkeypatch.setattr(cache_module, "RACY_NS", 0)  # as if the files were old
    load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    quiet = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    assert quiet.hashed == 0 and quiet.decoded == 0 and quiet.from_cache == 4
    write_image(samples[2].path, 255 - gray_image)
    changed = load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    assert changed.hashed == 1 and changed.decoded == 1
    assert np.array_equal(changed.x[2], preprocess_file(samples[2].path, contract))


@pytest.mark.data
def test_a_replaced_image_in_the_real_data_set(real_data: Path, tmp_path: Path) -> None:
    """The audit's case: test/NORMAL/IM-0022-0001.jpeg replaced, MANIFEST.csv left as it was."""
    from train.data import discover

    names = [
        "test/NORMAL/IM-0022-0001.jpeg",
        "test/NORMAL/IM-0001-0001.jpeg",
        "test/PNEUMONIA/person100_bacteria_475.jpeg",
    ]
    root = tmp_path / "chest_xray"
    lines = (real_data / "MANIFEST.csv").read_text(encoding="utf-8").splitlines()
    rows = [line for line in lines[1:] if line.split(",", 1)[0] in names]
    assert len(rows) == len(names)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real_data / name, root / name)
    (root / "MANIFEST.csv").write_text("\n".join([lines[0], *rows]) + "\n", encoding="utf-8")
    contract = PreprocessContract(height=64, width=64)
    cache = tmp_path / "cache"
    samples = discover(root)
    assert all(s.sha256 for s in samples)
    load_arrays(samples, LABELS, contract, cache_dir=cache, progress=False)
    shutil.copyfile(root / names[1], root / names[0])
    after = load_arrays(discover(root), LABELS, contract, cache_dir=cache, progress=False)
    for row, path in zip(after.x, after.paths, strict=True):
        assert np.array_equal(row, preprocess_file(path, contract)), path


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


def test_cache_root_is_resolved_at_the_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--cache-dir, else $PNEUMO_CACHE, else ~/.cache/pneumo-edge: read by the CLI, never by train.cache."""
    from train.cli import cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root(None) == tmp_path / "elsewhere"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.setenv("PNEUMO_CACHE", "")  # set but empty: the default, as an unset variable
    assert cache_root(None) == tmp_path / "home" / ".cache" / "pneumo-edge"
    monkeypatch.delenv("PNEUMO_CACHE")
    assert (
        cache_root(None) == tmp_path / "home" / ".cache" / "pneumo-edge" == Path.home() / ".cache/pneumo-edge"
    )


def test_the_cache_takes_its_root_as_an_argument(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gray_image: np.ndarray
) -> None:
    """$PNEUMO_CACHE no longer steers the library: a caller passing no root gets the fixed default."""
    samples = _samples(tmp_path / "data", gray_image, n=2)
    contract = PreprocessContract(height=32, width=32)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path / "env"))
    given = load_arrays(samples, LABELS, contract, cache_dir=tmp_path / "given", progress=False)
    assert Path(given.cache_dir) == store_dir(contract, tmp_path / "given")
    default = load_arrays(samples, LABELS, contract, progress=False)
    assert Path(default.cache_dir) == store_dir(contract, tmp_path / "home" / ".cache" / "pneumo-edge")
    assert not (tmp_path / "env").exists()
    # the root never enters the key: the same contract is the same folder name under every root
    assert Path(given.cache_dir).name == Path(default.cache_dir).name == cache_module.contract_key(contract)


@pytest.mark.parametrize(
    ("flag", "in_config", "env", "expected"),
    [
        (None, None, "env", "env"),
        (None, None, None, "home/.cache/pneumo-edge"),
        (None, "toml", "env", "toml"),
        ("flag", "toml", "env", "flag"),
    ],
)
def test_pneumo_train_gives_the_run_the_resolved_cache_root(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flag: str | None,
    in_config: str | None,
    env: str | None,
    expected: str,
) -> None:
    """Precedence of the cache root: --cache-dir > the --config file's cache_dir > $PNEUMO_CACHE > default."""
    import train.fit
    from train.cli import train_main
    from train.config import TrainConfig
    from train.errors import TrainError

    seen: list[TrainConfig] = []

    def fake_train_run(config: TrainConfig) -> None:
        seen.append(config)
        raise TrainError("stopped before training")

    monkeypatch.setattr(train.fit, "train_run", fake_train_run)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if env is None:
        monkeypatch.delenv("PNEUMO_CACHE", raising=False)
    else:
        monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path / env))
    argv = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    if flag is not None:
        argv += ["--cache-dir", str(tmp_path / flag)]
    if in_config is not None:
        config = tmp_path / "run.toml"
        config.write_text(f'cache_dir = "{tmp_path / in_config}"\n')
        argv += ["--config", str(config)]
    assert train_main(argv) == 1
    assert [c.cache_dir for c in seen] == [tmp_path / expected]
