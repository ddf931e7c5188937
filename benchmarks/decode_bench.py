"""How fast this machine feeds the model: images/s by decode threads, alone and with inference.

``pneumo bench decode BUNDLE --images DIR --workers 0,1,2,4`` runs what ``pneumo edge predict
--workers N`` runs (:func:`edge_runtime.predictor.predict_files`) over the same files for each
worker count, in one process, the counts interleaved over ``repeats`` rounds so that drift of the
machine falls on all of them alike; each figure is the median of its rounds. Two rows per count:

* *feed*: read + decode + preprocess only (:func:`edge_runtime.decode_pool.decode_ahead`), the most
  images/s the CPU can hand to any model;
* *predict*: the same with the model on the chosen backend, as ``pneumo edge predict`` does it.

Ratios are to the first worker count of the same run (``0`` decodes in the main thread, without
overlap: the serial baseline). The images are only read.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.errors import BenchConfigError, BenchInputError
from benchmarks.watch_bench import source_images
from edge_runtime.contract import SYNTHETIC_WARNING


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


def _feed(files: list[Path], contract: Any, workers: int) -> tuple[float, float]:
    """Seconds to decode every file, and the mean decode time per file on its thread (ms)."""
    from edge_runtime.decode_pool import decode_ahead

    start = time.perf_counter()
    seconds = [decoded.seconds for decoded in decode_ahead(files, contract, workers)]
    return time.perf_counter() - start, 1000.0 * statistics.fmean(seconds)


def _predict(files: list[Path], predictor: Any, contract: Any, batch: int, workers: int) -> tuple[float, int]:
    """Seconds to classify every file as ``pneumo edge predict`` does, and how many got a result."""
    from edge_runtime.predictor import predict_files

    failures: list[tuple[str, str]] = []
    start = time.perf_counter()
    results = predict_files(predictor, files, contract, batch, workers, failures, progress=False)
    return time.perf_counter() - start, len(results)


def run_decode_bench(config: DecodeBenchConfig, log: Any = print) -> dict[str, Any]:
    """Every worker count's feed and predict throughput, interleaved over ``repeats`` rounds."""
    found = source_images(config.images)[: config.count]
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-decode-") as scratch:
        if config.full_size is not None:
            log(
                f"writing {len(found)} full-size {config.full_size[0]}x{config.full_size[1]} 16-bit PNG copies"
            )
            found = write_full_size_copies(found, config.full_size, Path(scratch))
        return _run(config, found, log)


def _run(config: DecodeBenchConfig, found: list[Path], log: Any) -> dict[str, Any]:
    from edge_runtime.backends.select import select_backend
    from edge_runtime.bundle import Bundle
    from edge_runtime.predictor import Predictor

    files = [found[i % len(found)] for i in range(config.count)]
    bundle = Bundle.open(config.bundle)
    contract = bundle.contract
    choice = select_backend(bundle, config.backend, config.precision, config.threads, None)
    feed: dict[int, list[float]] = {w: [] for w in config.workers}
    decode_ms: dict[int, list[float]] = {w: [] for w in config.workers}
    predict: dict[int, list[float]] = {w: [] for w in config.workers}
    classified = 0
    with choice.backend as backend:
        predictor = Predictor(backend, bundle.info, model_sha256="")
        _predict(files[: config.batch], predictor, contract, config.batch, max(config.workers))  # warm-up
        for round_no in range(1, config.repeats + 1):
            for workers in config.workers:
                seconds, per_file_ms = _feed(files, contract, workers)
                feed[workers].append(seconds)
                decode_ms[workers].append(per_file_ms)
                seconds, classified = _predict(files, predictor, contract, config.batch, workers)
                predict[workers].append(seconds)
                log(
                    f"round {round_no}/{config.repeats}, {workers} decode thread(s): feed "
                    f"{len(files) / feed[workers][-1]:.1f} images/s, predict {len(files) / seconds:.1f} images/s"
                )
        backend_name, precision = backend.name, backend.precision
    return {
        "config": config.to_dict(),
        "backend": backend_name,
        "precision": precision,
        "model_version": bundle.info.model_version,
        "arch": bundle.info.arch,
        "synthetic": bundle.info.synthetic,
        "images": len(files),
        "distinct_files": len(found),
        "classified_per_pass": classified,
        "rows": _rows(config, len(files), feed, decode_ms, predict),
    }


def _rows(
    config: DecodeBenchConfig,
    images: int,
    feed: dict[int, list[float]],
    decode_ms: dict[int, list[float]],
    predict: dict[int, list[float]],
) -> list[dict[str, Any]]:
    # throughput is images / median seconds, so a ratio to the first count is a ratio of seconds
    base_feed_s, base_predict_s = (
        statistics.median(feed[config.workers[0]]),
        statistics.median(predict[config.workers[0]]),
    )
    rows = []
    for workers in config.workers:
        feed_s, predict_s = statistics.median(feed[workers]), statistics.median(predict[workers])
        rows.append(
            {
                "workers": workers,
                "feed_images_per_s": round(images / feed_s, 2),
                "predict_images_per_s": round(images / predict_s, 2),
                "decode_ms_per_image": round(statistics.median(decode_ms[workers]), 3),
                "feed_vs_first": round(base_feed_s / feed_s, 3),
                "predict_vs_first": round(base_predict_s / predict_s, 3),
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
        f"{source}), batch {config['batch']}, backend {result['backend']} "
        f"{result['precision']}; median of {config['repeats']} interleaved rounds",
        f"- model {result['model_version']} ({result['arch']})"
        + (f" [{SYNTHETIC_WARNING}] Only its speed is measured here." if result["synthetic"] else ""),
        "- feed: read + decode + preprocess only; predict: with the model, as `pneumo edge predict --workers N`",
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
