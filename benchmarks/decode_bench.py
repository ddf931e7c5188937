"""How fast this machine feeds the model: images/s by decode threads, alone and with inference.

``pneumo bench decode BUNDLE --images DIR --workers 0,1,2,4`` runs what ``pneumo edge predict
--workers N`` runs (:func:`edge_runtime.predictor.predict_files`) over the same files for each
worker count, in one process, the counts interleaved over ``repeats`` rounds so that drift of the
machine falls on all of them alike; each figure is the median of its rounds. Two rows per count:

* *feed*: read + decode + preprocess only (:func:`edge_runtime.decode_pool.decode_ahead`), the most
  images/s the CPU can hand to any model;
* *predict*: the same with the model on the chosen backend, as ``pneumo edge predict`` does it.

Ratios are to the first worker count of the same run (``0`` decodes in the main thread, without
overlap: the serial baseline). The images are only read. Every file is decoded once before timing:
one that cannot be is left out of the timed set with a warning (none decodable: an error), and the
rates count only the images that got a result.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.errors import BenchConfigError, BenchInputError
from benchmarks.watch_bench import source_images
from edge_runtime.contract import SYNTHETIC_WARNING, PreprocessContract

if TYPE_CHECKING:
    from edge_runtime.bundle import Bundle


@dataclass(frozen=True)
class DecodeBenchConfig:
    """One run of the decode benchmark."""

    bundle: Path
    images: Path
    workers: tuple[int, ...] = (0, 1, 2, 4)
    #: images per measurement: the folder's files cycled (or cut) to this many
    count: int = 200
    batch: int = 8
    repeats: int = 3
    backend: str = "auto"
    precision: str = "fp32"
    threads: int = 0
    #: (width, height): decode 16-bit PNG copies of the images at this size, as a detector writes
    #: them (the shared data set is downsampled); None: the files as they are
    full_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle", Path(self.bundle))
        object.__setattr__(self, "images", Path(self.images))
        object.__setattr__(self, "workers", tuple(self.workers))
        if not self.workers or any(not (0 <= w <= 64) for w in self.workers):
            raise BenchConfigError(f"--workers {self.workers}: every count must be within 0..64")
        if not (1 <= self.count <= 100_000):
            raise BenchConfigError(f"--count {self.count}: must be within 1..100000")
        if not (1 <= self.batch <= 1024):
            raise BenchConfigError(f"--batch {self.batch}: must be within 1..1024")
        if not (1 <= self.repeats <= 50):
            raise BenchConfigError(f"--repeats {self.repeats}: must be within 1..50")
        if self.full_size is not None and (
            len(self.full_size) != 2 or not all(64 <= side <= 8192 for side in self.full_size)
        ):
            raise BenchConfigError(f"--full-size {self.full_size}: expected WIDTHxHEIGHT, each 64..8192")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bundle"], data["images"], data["workers"] = (
            str(self.bundle),
            str(self.images),
            list(self.workers),
        )
        data["full_size"] = list(self.full_size) if self.full_size else None
        return data


def write_full_size_copies(files: list[Path], size: tuple[int, int], folder: Path) -> list[Path]:
    """16-bit grayscale PNG copies of ``files`` upscaled to ``size`` (bicubic), in ``folder``."""
    import cv2
    import numpy as np

    from edge_runtime.errors import ImageDecodeError
    from edge_runtime.preprocess import load_image

    copies = []
    for i, path in enumerate(files):
        try:
            image = load_image(path)
        except ImageDecodeError:
            continue  # the bench is about decoding images; one that is not has no full-size copy
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if image.dtype == np.uint8:
            image = image.astype(np.uint16) * 257
        copy = folder / f"{i:05d}.png"
        if not cv2.imwrite(str(copy), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)):
            raise BenchInputError(f"{copy}: could not write a full-size copy of {path}")
        copies.append(copy)
    if not copies:
        raise BenchInputError(f"none of the {len(files)} files could be decoded to make full-size copies")
    return copies


def decodable_files(
    folder: Path, candidates: list[Path], contract: PreprocessContract, wanted: int
) -> tuple[list[Path], list[str]]:
    """The first ``wanted`` of ``candidates`` that decode to model input, and a warning per file that did not.

    Raises :class:`BenchInputError` when none decodes: a rate over files that give no result measures
    only how fast they are refused.
    """
    from edge_runtime.decode_pool import read_and_preprocess

    good: list[Path] = []
    failed: list[str] = []
    for path in candidates:
        decoded = read_and_preprocess(path, contract)
        if decoded.image is None:
            failed.append(f"{path}: {decoded.error or 'not decoded'}")
            continue
        good.append(path)
        if len(good) == wanted:
            break
    if not good:
        raise BenchInputError(
            f"{folder}: none of the {len(failed)} image file(s) could be decoded (first: {failed[0]}); "
            "point --images at a folder of readable X-ray images (.png, .jpeg, .dcm)"
        )
    return good, [_undecodable_warning(failed, len(good) + len(failed))] if failed else []


def _undecodable_warning(failed: list[str], examined: int) -> str:
    shown = "; ".join(failed[:3]) + (f"; and {len(failed) - 3} more" if len(failed) > 3 else "")
    return (
        f"{len(failed)} of {examined} files could not be decoded and are left out of the timed set: {shown}"
    )


def _feed(files: list[Path], contract: Any, workers: int) -> tuple[float, float, int]:
    """Seconds to decode every file, the mean decode time per file on its thread (ms), and how many decoded."""
    from edge_runtime.decode_pool import decode_ahead

    # Streamed, keeping only numbers: holding every decoded image (--count up to 100000) would
    # take gigabytes, and time the allocations too, which predict (streamed) does not pay.
    per_file: list[float] = []
    ok = 0
    start = time.perf_counter()
    for decoded in decode_ahead(files, contract, workers):
        per_file.append(decoded.seconds)
        ok += decoded.image is not None
    seconds = time.perf_counter() - start
    return seconds, 1000.0 * statistics.fmean(per_file), ok


def _predict(
    files: list[Path], predictor: Any, contract: Any, batch: int, workers: int
) -> tuple[float, int, list[tuple[str, str]]]:
    """Seconds to classify every file as ``pneumo edge predict`` does, how many got a result, and the failures."""
    from edge_runtime.predictor import predict_files

    failures: list[tuple[str, str]] = []
    start = time.perf_counter()
    results = predict_files(predictor, files, contract, batch, workers, failures, progress=False)
    return time.perf_counter() - start, len(results), failures


def run_decode_bench(config: DecodeBenchConfig, log: Any = print) -> dict[str, Any]:
    """Every worker count's feed and predict throughput, interleaved over ``repeats`` rounds."""
    from edge_runtime.bundle import Bundle

    bundle = Bundle.open(config.bundle)
    found, warnings = decodable_files(
        config.images, source_images(config.images), bundle.contract, config.count
    )
    for warning in warnings:
        log(f"warning: {warning}")
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-decode-") as scratch:
        if config.full_size is not None:
            log(
                f"writing {len(found)} full-size {config.full_size[0]}x{config.full_size[1]} 16-bit PNG copies"
            )
            found = write_full_size_copies(found, config.full_size, Path(scratch))
        return _run(config, bundle, found, warnings, log)


def _run(
    config: DecodeBenchConfig, bundle: Bundle, found: list[Path], warnings: list[str], log: Any
) -> dict[str, Any]:
    from edge_runtime.backends.select import select_backend
    from edge_runtime.predictor import Predictor

    files = [found[i % len(found)] for i in range(config.count)]
    contract = bundle.contract
    choice = select_backend(bundle, config.backend, config.precision, config.threads, None)
    feed: dict[int, list[float]] = {w: [] for w in config.workers}
    decode_ms: dict[int, list[float]] = {w: [] for w in config.workers}
    predict: dict[int, list[float]] = {w: [] for w in config.workers}
    # the fewest images any pass of a count handed on (feed) or got a result for (predict): its rate's numerator
    fed: dict[int, int] = dict.fromkeys(config.workers, len(files))
    classified: dict[int, int] = dict.fromkeys(config.workers, len(files))
    failures: list[tuple[str, str]] = []
    with choice.backend as backend:
        predictor = Predictor(backend, bundle.info, model_sha256="")
        _predict(files[: config.batch], predictor, contract, config.batch, max(config.workers))  # warm-up
        for round_no in range(1, config.repeats + 1):
            for workers in config.workers:
                feed_s, per_file_ms, decoded = _feed(files, contract, workers)
                feed[workers].append(feed_s)
                decode_ms[workers].append(per_file_ms)
                fed[workers] = min(fed[workers], decoded)
                predict_s, results, failed = _predict(files, predictor, contract, config.batch, workers)
                predict[workers].append(predict_s)
                classified[workers] = min(classified[workers], results)
                failures = failures or failed
                log(
                    f"round {round_no}/{config.repeats}, {workers} decode thread(s): feed "
                    f"{decoded / feed_s:.1f} images/s, predict {results / predict_s:.1f} images/s"
                )
        backend_name, precision = backend.name, backend.precision
    per_pass = min(classified.values())
    if per_pass == 0 or min(fed.values()) == 0:
        raise BenchInputError(
            f"{config.bundle}: a pass over {len(files)} images that decoded before timing gave no result "
            f"({_first(failures)}); check the bundle with `pneumo edge verify` and that the files in "
            f"{config.images} did not change during the run"
        )
    if per_pass < len(files):
        warnings = [
            *warnings,
            f"only {per_pass} of {len(files)} images per pass got a result ({_first(failures)}); "
            "the rates count only those",
        ]
    return {
        "config": config.to_dict(),
        "backend": backend_name,
        "precision": precision,
        "model_version": bundle.info.model_version,
        "arch": bundle.info.arch,
        "synthetic": bundle.info.synthetic,
        "images": len(files),
        "distinct_files": len(found),
        "classified_per_pass": per_pass,
        "warnings": warnings,
        "rows": _rows(config, fed, classified, feed, decode_ms, predict),
    }


def _first(failures: list[tuple[str, str]]) -> str:
    return f"first failure: {failures[0][0]}: {failures[0][1]}" if failures else "no failure recorded"


def _rows(
    config: DecodeBenchConfig,
    fed: dict[int, int],
    classified: dict[int, int],
    feed: dict[int, list[float]],
    decode_ms: dict[int, list[float]],
    predict: dict[int, list[float]],
) -> list[dict[str, Any]]:
    # throughput is images with a result / median seconds; ratios are of throughputs, so a count that
    # loses images to failures does not look faster than one that does not
    first = config.workers[0]
    base_feed = fed[first] / statistics.median(feed[first])
    base_predict = classified[first] / statistics.median(predict[first])
    rows = []
    for workers in config.workers:
        feed_ips = fed[workers] / statistics.median(feed[workers])
        predict_ips = classified[workers] / statistics.median(predict[workers])
        rows.append(
            {
                "workers": workers,
                "feed_images_per_s": round(feed_ips, 2),
                "predict_images_per_s": round(predict_ips, 2),
                "decode_ms_per_image": round(statistics.median(decode_ms[workers]), 3),
                "feed_vs_first": round(feed_ips / base_feed, 3),
                "predict_vs_first": round(predict_ips / base_predict, 3),
                "rounds_s": {
                    "feed": [round(s, 4) for s in feed[workers]],
                    "predict": [round(s, 4) for s in predict[workers]],
                },
            }
        )
    return rows


def decode_markdown(result: dict[str, Any]) -> list[str]:
    """The result as Markdown: what ran, then one table row per worker count."""
    config = result["config"]
    first = config["workers"][0]
    full = config.get("full_size")
    source = f"`{config['images']}`" + (
        f", each upscaled to {full[0]}x{full[1]} and written as a 16-bit PNG" if full else ""
    )
    lines = [
        f"- {result['images']} images per pass ({result['distinct_files']} distinct files from "
        f"{source}), {result['classified_per_pass']} classified per pass, batch {config['batch']}, "
        f"backend {result['backend']} {result['precision']}; median of {config['repeats']} interleaved rounds",
        f"- model {result['model_version']} ({result['arch']})"
        + (f" [{SYNTHETIC_WARNING}] Only its speed is measured here." if result["synthetic"] else ""),
        *(f"- **warning:** {warning}" for warning in result.get("warnings", [])),
        "- feed: read + decode + preprocess only; predict: with the model, as `pneumo edge predict --workers N`; "
        "images/s count only images decoded (feed) or classified (predict)",
        f"- ratios are to {first} decode thread(s) in this run"
        + (" (0: decoded in the main thread, no overlap)" if first == 0 else ""),
        "",
        "| decode threads | feed images/s | predict images/s | decode ms/image (per thread) | feed ratio | predict ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['workers']} | {row['feed_images_per_s']:.1f} | {row['predict_images_per_s']:.1f} | "
            f"{row['decode_ms_per_image']:.2f} | {row['feed_vs_first']:.2f}x | {row['predict_vs_first']:.2f}x |"
        )
    return lines
