"""``pneumo export bundle``: a training run -> the folder a technician copies onto a Jetson.

Steps, each timed and reported (one line per step in the CLI):

1. ``onnx``        model.h5 -> model.onnx (uint8 in), parity vs Keras on test images (fails above 1e-4)
2. ``calibration`` class-balanced training images -> calibration/calib.npy + calib.json (int8 only)
3. ``fp16``        model_fp16.onnx, run on ONNX Runtime CPU, diff vs FP32 (sanity bound)
4. ``int8``        model_int8_qdq.onnx calibrated on step 2, run on ONNX Runtime CPU, diff vs FP32
5. ``accuracy``    every precision on the test split; fails when INT8 sensitivity drops too far
6. ``golden``      golden/images.npy + golden.json (expected FP32 outputs, per-precision tolerances)
7. ``records``     contract.json, model_info.json, model_card.json, export_report.json
8. ``manifest``    edge_runtime.bundle.write_manifest, then verify_manifest

The bundle is built in a hidden sibling folder and renamed into place only
when every step passed, so a failed export never leaves a half bundle where a
good one is expected; ``--overwrite`` replaces an existing *bundle* (a folder
whose manifest.json is a bundle manifest and which holds nothing the manifest
does not list, ``engines/`` aside), never any other folder. ``--tar`` packs the
archive from the staging folder before anything is installed, so a failed
archive leaves the previous bundle and its archive in place, together.
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import run_layout
from edge_runtime.bundle import (
    BUNDLE_SCHEMA,
    ENGINES_DIR,
    GOLDEN_DIR,
    MANIFEST_FILE,
    MODEL_CARD_FILE,
    ONNX_FOR_PRECISION,
    verify_manifest,
    write_manifest,
)
from edge_runtime.contract import SYNTHETIC_WARNING, ModelInfo
from edge_runtime.errors import EdgeError
from edge_runtime.fileio import fsync_dir, read_json, sha256_file
from export.accuracy import (
    accuracy_drop_points,
    evaluate_precisions,
    headline,
    require_int8_sensitivity,
    sensitivity_drop_points,
)
from export.calibration import CALIBRATION_DIR, CalibrationSet, build_calibration_set, save_calibration
from export.config import BundleConfig
from export.errors import ExportError, OutputExistsError, ParityError, RunFolderError
from export.golden import golden_check, golden_tolerances, write_golden
from export.mixed_precision import int8_qdq_within_target
from export.onnx_from_keras import CONVERSION_MODULES, export_onnx, require_modules
from export.parity import ParityResult, compare_outputs, onnx_outputs
from export.precision import fp16_from_onnx, qdq_summary
from export.report import REPORT_FILE, new_report, write_report
from export.run_folder import (
    HeldOutSplit,
    LabelledImage,
    RunFolder,
    balanced_sample,
    label_indices,
    load_images,
)


@dataclass
class StepResult:
    """One export step: what it wrote, how long it took, and what it measured or why it failed."""

    name: str
    ok: bool
    seconds: float
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "files": self.files,
            "bytes": self.bytes,
            "detail": self.detail,
        }


StepCallback = Callable[[StepResult], None]


@dataclass
class BundleResult:
    """The finished bundle: where it is, its export report and manifest, the optional archive."""

    root: Path
    report: dict[str, Any]
    manifest: dict[str, Any]
    steps: list[StepResult]
    archive: Path | None = None


@dataclass
class _StepRecord:
    files: list[Path] = field(default_factory=list)
    detail: str = ""


class _Steps:
    """Times each step and reports it, failed or not, before the error propagates.

    ``root`` is the staging folder the steps write; ``final`` is where the bundle goes.
    """

    def __init__(self, root: Path, on_step: StepCallback | None, final: Path) -> None:
        self.root = root
        self.on_step = on_step
        self.final = final
        self.results: list[StepResult] = []

    @contextmanager
    def step(self, name: str) -> Iterator[_StepRecord]:
        record = _StepRecord()
        started = time.perf_counter()
        try:
            yield record
        except (ExportError, EdgeError) as exc:
            _name_final_paths(exc, self.root, self.final)
            self._emit(name, False, time.perf_counter() - started, record, str(exc))
            raise
        self._emit(name, True, time.perf_counter() - started, record, record.detail)

    def _emit(self, name: str, ok: bool, seconds: float, record: _StepRecord, detail: str) -> None:
        files = [p for p in record.files if p.is_file()]
        result = StepResult(
            name=name,
            ok=ok,
            seconds=seconds,
            files=[
                p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else str(p) for p in files
            ],
            bytes=sum(p.stat().st_size for p in files),
            detail=detail,
        )
        self.results.append(result)
        if self.on_step is not None:
            self.on_step(result)


def _name_final_paths(exc: Exception, staging: Path, final: Path) -> None:
    """Point a step's error at the bundle's own folder, not the staging folder.

    The staging folder is deleted before the user reads the message, so a path in it
    leads nowhere; the same file in ``final`` is where the user looks, and the note
    says that folder was not touched (an old bundle there still has its own file).
    """
    message = str(exc)
    if len(exc.args) != 1 or str(staging) not in message:
        return
    exc.args = (
        message.replace(str(staging), str(final)) + f" (the bundle was not installed: {final} is as it was)",
    )


def make_bundle(
    run_or_h5: str | Path,
    output: str | Path,
    config: BundleConfig,
    on_step: StepCallback | None = None,
) -> BundleResult:
    """Build, verify and install a deployment bundle at ``output``; see the module docstring for the steps."""
    fp16 = ("onnxconverter_common",) if "fp16" in config.precisions else ()
    require_modules("a bundle", (*CONVERSION_MODULES, *fp16))
    run = RunFolder.resolve(run_or_h5)
    output = Path(output)
    check_output(output, run, config.overwrite)
    if config.tar:
        # before building, so an archive in the way costs no build
        _refuse_archive_in_the_way(archive_path(output), config.overwrite)
    staging = _empty_staging_folder(output)
    steps = _Steps(staging, on_step, output)
    try:
        report = _build(run, staging, config, steps)
        archive = install_bundle(staging, output, config.overwrite, config.tar)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = verify_manifest(output)
    return BundleResult(root=output, report=report, manifest=manifest, steps=steps.results, archive=archive)


def check_output(output: Path, run: RunFolder, overwrite: bool) -> None:
    """Refuse outputs that would clobber the run or a non-bundle folder; a non-empty one needs --overwrite."""
    resolved, run_dir = output.resolve(), run.folder.resolve()
    if resolved == run_dir or run_dir.is_relative_to(resolved):
        raise OutputExistsError(
            f"{output}: is (or contains) the run folder {run.folder}; choose a separate bundle folder, "
            f"e.g. -o bundles/{run.info.model_version}"
        )
    _check_replaceable(output, overwrite)


def _check_replaceable(output: Path, overwrite: bool) -> None:
    """``output`` may be replaced: absent, an empty folder, or (with --overwrite) a bundle and nothing else."""
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output}: exists and is not a folder; choose another -o")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{output}: folder is not empty; pass --overwrite to replace the bundle there"
            )
        require_bundle_only(output)


def bundle_manifest_files(folder: Path) -> dict[str, Any] | None:
    """The files table of ``folder/manifest.json`` when it is a bundle manifest of this schema, else None."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("schema") != BUNDLE_SCHEMA:
        return None
    files = manifest.get("files")
    return files if isinstance(files, dict) else None


def enclosing_bundle(path: Path) -> Path | None:
    """The bundle folder ``path`` lies in (``path`` itself or a parent with a bundle manifest), or None."""
    for folder in (path.resolve(), *path.resolve().parents):
        if folder.is_dir() and bundle_manifest_files(folder) is not None:
            return folder
    return None


def files_outside_manifest(root: Path, listed: Iterable[str]) -> list[str]:
    """Every file or link under ``root`` that the manifest does not list, ``engines/`` aside.

    ``engines/`` is the one place the edge side writes into a bundle (engines, their sidecars
    with the self-test record, timing and calibration caches); the manifest leaves it out.
    Hidden files count: a bundle is replaced whole, so anything else there is somebody's.
    """
    expected = {*listed, MANIFEST_FILE}
    found = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder).relative_to(root)
        if here == Path("."):
            dirs[:] = [d for d in dirs if d != ENGINES_DIR]
            names = [n for n in names if n != ENGINES_DIR]
        # os.walk lists a link to a folder among the folders and does not enter it
        links = [d for d in dirs if Path(folder, d).is_symlink()]
        found += [(here / n).as_posix() for n in (*names, *links) if (here / n).as_posix() not in expected]
    return sorted(found)


def require_bundle_only(output: Path) -> None:
    """Raise unless ``output`` is a bundle (a bundle manifest) holding nothing its manifest does not list."""
    listed = bundle_manifest_files(output)
    if listed is None:
        raise OutputExistsError(
            f"{output}: not empty and not a bundle (no {MANIFEST_FILE} with a schema-{BUNDLE_SCHEMA} files "
            "table); refusing to delete it even with --overwrite, choose another -o"
        )
    unexpected = files_outside_manifest(output, listed)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (
            f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        )
        raise OutputExistsError(
            f"{output}: holds files its {MANIFEST_FILE} does not list ({shown}); --overwrite replaces a "
            "bundle whole and would delete them, so it refuses: move them out or choose another -o"
        )


def _empty_staging_folder(output: Path) -> Path:
    """A hidden sibling of ``output`` (same file system, so the final rename is atomic), left empty.

    Its name carries this process's id, so it is never a folder the user made; a leftover of a
    killed build with the same id is removed first.
    """
    staging = output.parent / f".{output.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def install_bundle(staging: Path, output: Path, overwrite: bool, tar: bool) -> Path | None:
    """Move the finished bundle in ``staging`` to ``output``; with ``tar``, its archive beside it (returned).

    The archive is packed from ``staging`` under the final folder name before anything is
    installed, and renamed into place right after the bundle: a failed archive leaves the
    previous bundle and the previous archive in place, a matching pair.
    """
    if not tar:
        _move_into_place(staging, output, overwrite)
        return None
    archive = archive_path(output)
    packed = _pack_archive(staging, output.name, archive)
    try:
        # again: one may have appeared during the build
        _refuse_archive_in_the_way(archive, overwrite)
        _move_into_place(staging, output, overwrite)
    except BaseException:
        packed.unlink(missing_ok=True)
        raise
    os.replace(packed, archive)
    fsync_dir(archive.parent)
    return archive


def _move_into_place(staging: Path, output: Path, overwrite: bool) -> None:
    """Rename the finished bundle into place.

    Without --overwrite a plain rename, which the kernel refuses onto a non-empty folder, so a
    folder that appeared during the build is never replaced. With it, what is there now is
    checked again (it may have changed during the build), moved aside, then removed.
    """
    if overwrite and output.exists():
        _check_replaceable(output, overwrite)
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.replace(output, old)
        os.replace(staging, output)
        fsync_dir(output.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(staging, output)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        raise OutputExistsError(
            f"{output}: appeared while the bundle was being built and is not empty; it was left as it is and "
            "the new bundle discarded: choose another -o"
            + ("" if overwrite else ", or pass --overwrite to replace a bundle there")
        ) from exc
    fsync_dir(output.parent)


def archive_path(root: Path) -> Path:
    """Where ``--tar`` puts the archive of the bundle at ``root``: beside it."""
    return root.with_name(root.name + ".tar.gz")


def _refuse_archive_in_the_way(archive: Path, overwrite: bool) -> None:
    if archive.exists() and not overwrite:
        raise OutputExistsError(f"{archive}: exists; pass --overwrite to replace it")


def _pack_archive(folder: Path, arcname: str, archive: Path) -> Path:
    """``folder`` as a .tar.gz named ``arcname`` inside, in a hidden temporary file beside ``archive``.

    Returns the temporary file, synced; the caller renames it over ``archive``. On failure
    it is removed and the error names ``archive``: nothing was installed yet.
    """
    fd, name = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".tmp", dir=archive.parent)
    packed = Path(name)
    try:
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; others copy this file to the clinic
        finally:
            os.close(fd)
        with tarfile.open(packed, "w:gz") as tar:
            tar.add(folder, arcname=arcname)
        synced = os.open(packed, os.O_RDONLY)
        try:
            os.fsync(synced)
        finally:
            os.close(synced)
    except OSError as exc:
        packed.unlink(missing_ok=True)
        raise ExportError(
            f"{archive}: cannot write the archive ({exc.strerror or exc}); nothing was installed: the "
            f"bundle and archive already at {archive.parent}, if any, are as they were. Free space there "
            "and run again, or leave out --tar"
        ) from exc
    except BaseException:
        packed.unlink(missing_ok=True)
        raise
    return packed


@dataclass(frozen=True)
class _Inputs:
    """The images every step measures on, preprocessed once: the test batch and the rows parity and golden use."""

    evaluated: list[LabelledImage]
    train: list[LabelledImage]
    held_out: HeldOutSplit
    batch: np.ndarray
    y_true: np.ndarray
    parity_batch: np.ndarray
    golden_idx: np.ndarray


def _build(run: RunFolder, root: Path, config: BundleConfig, steps: _Steps) -> dict[str, Any]:
    """Every step of the module docstring, in order, into ``root`` (the staging folder); returns the report."""
    return _BundleBuilder(run, root, config, steps).build()


class _BundleBuilder:
    """One bundle build: each method is one reported step and adds its section to :attr:`report`.

    Only ``root`` (the staging folder) is written; the run folder and the data are only read.
    """

    def __init__(self, run: RunFolder, root: Path, config: BundleConfig, steps: _Steps) -> None:
        self.run = run
        self.root = root
        self.config = config
        self.steps = steps
        self.info = run.info
        self.contract = run.contract
        self.paths = {p: root / ONNX_FOR_PRECISION[p] for p in config.precisions}
        self.report = _new_bundle_report(run, config)
        # the calibration methods the INT8 graph was tried with: the gate's advice names another
        self.int8_methods: tuple[str, ...] = ()

    def build(self) -> dict[str, Any]:
        precisions = self.config.precisions
        inputs = self.read_inputs()
        self.convert_to_onnx(inputs.parity_batch)
        fp32_parity = onnx_outputs(self.paths["fp32"], inputs.parity_batch)
        calibration = self.calibrate(inputs.train, inputs.held_out) if "int8" in precisions else None
        if "fp16" in precisions:
            self.make_fp16(fp32_parity, inputs.parity_batch)
        if calibration is not None:
            self.make_int8(calibration, fp32_parity, inputs.parity_batch)
        outputs = self.measure_accuracy(inputs)
        self.write_golden_set(inputs, outputs)
        self.write_records()
        self.write_manifest()
        return self.report

    def read_inputs(self) -> _Inputs:
        """Step ``inputs``: the test images preprocessed once, the training list only when INT8 needs it."""
        config, info, contract = self.config, self.info, self.contract
        with self.steps.step("inputs") as record:
            evaluated = _evaluated_test_images(self.run, config)
            train = self.run.split_images("train", config.data_root) if "int8" in config.precisions else []
            batch = load_images(evaluated, contract)
            parity = balanced_sample(evaluated, info.labels, config.onnx.parity_images, seed=0)
            golden = balanced_sample(evaluated, info.labels, config.golden.size, config.golden.seed)
            inputs = _Inputs(
                evaluated=evaluated,
                train=train,
                held_out=self.run.held_out(config.data_root),
                batch=batch,
                y_true=label_indices(evaluated, info.labels),
                parity_batch=batch[_subset(evaluated, parity)],
                golden_idx=_subset(evaluated, golden),
            )
            record.detail = (
                f"{len(evaluated)} test images preprocessed to {contract.height}x{contract.width} "
                f"{contract.color}, {len(train)} training images listed"
            )
        return inputs

    def convert_to_onnx(self, parity_batch: np.ndarray) -> None:
        """Step ``onnx``: model.h5 -> model.onnx, parity-checked against Keras (fails above the tolerance)."""
        fp32 = self.paths["fp32"]
        with self.steps.step("onnx") as record:
            record.files.append(fp32)
            exported = export_onnx(
                self.run.h5_path,
                self.contract,
                self.info,
                fp32,
                parity_batch,
                "test split, class-balanced",
                self.config.onnx,
            )
            self.report["onnx"] = exported.to_dict()
            record.detail = f"opset {exported.opset}, {exported.parity.describe()}"

    def calibrate(self, train: list[LabelledImage], held_out: HeldOutSplit) -> CalibrationSet:
        """Step ``calibration``: class-balanced training images, none of a test file or patient -> calibration/."""
        with self.steps.step("calibration") as record:
            calibration = build_calibration_set(
                train, self.contract, self.info, self.config.calibration, held_out=held_out
            )
            record.files.extend(save_calibration(calibration, self.root / CALIBRATION_DIR))
            self.report["calibration"] = {k: v for k, v in calibration.meta.items() if k != "files"}
            counts = ", ".join(f"{k} {v}" for k, v in calibration.meta["class_counts"].items())
            record.detail = (
                f"{calibration.n} training images ({counts}), sha256 {calibration.file_list_sha256[:12]}"
            )
        return calibration

    def make_fp16(self, fp32_parity: np.ndarray, parity_batch: np.ndarray) -> None:
        """Step ``fp16``: model_fp16.onnx; refused when it strays from FP32 beyond the sanity bound."""
        path, bound = self.paths["fp16"], self.config.fp16.max_abs_diff
        with self.steps.step("fp16") as record:
            record.files.append(fp16_from_onnx(self.paths["fp32"], path))
            candidate = onnx_outputs(path, parity_batch, precision="fp16")
            result = _compare(fp32_parity, candidate, "fp16", self.info)
            self.report["fp16"] = {"file": path.name, "parity": result.to_dict(), "bound": bound}
            record.detail = result.describe()
            if result.max_abs_diff > bound:
                raise ParityError(
                    f"{path}: FP16 differs from FP32 by {result.max_abs_diff:.3g} (bound "
                    f"{bound:g}): the model overflows or underflows in float16; ship fp32/int8"
                )

    def make_int8(
        self, calibration: CalibrationSet, fp32_parity: np.ndarray, parity_batch: np.ndarray
    ) -> None:
        """Step ``int8``: the Q/DQ graph calibrated on the calibration set, compared with FP32."""
        path = self.paths["int8"]
        with self.steps.step("int8") as record:
            settings = int8_qdq_within_target(self.paths["fp32"], path, calibration.images, self.config.quant)
            record.files.append(path)
            candidate = onnx_outputs(path, parity_batch, precision="int8")
            result = _compare(fp32_parity, candidate, "int8", self.info)
            summary = qdq_summary(path)
            self.report["int8"] = {
                "file": path.name,
                "quantization": settings,
                "qdq": summary,
                "parity": result.to_dict(),
            }
            record.detail = _int8_detail(settings, summary, result)
            self.int8_methods = methods_tried(settings)

    def measure_accuracy(self, inputs: _Inputs) -> dict[str, np.ndarray]:
        """Step ``accuracy``: every precision on the test split; the INT8 sensitivity gate. Returns the outputs."""
        precisions = self.config.precisions
        with self.steps.step("accuracy") as record:
            results, outputs = evaluate_precisions(
                self.paths, inputs.batch, inputs.y_true, self.info, bootstrap=self.config.bootstrap, seed=0
            )
            accuracy = _accuracy_section(results, outputs, precisions, len(inputs.evaluated), self.info)
            accuracy["max_int8_sensitivity_drop_points"] = self.config.quant.max_sensitivity_drop
            self.report["accuracy"] = accuracy
            record.detail = "  ".join(
                f"{p} acc {results[p]['accuracy']:.3f} sens {results[p]['sensitivity']:.3f}"
                for p in precisions
            )
            if "int8" in precisions:
                # Recorded as failed first: the report section says so if the gate raises.
                accuracy["int8_gate_passed"] = False
                require_int8_sensitivity(
                    results, self.config.quant.max_sensitivity_drop, self.paths["int8"], self.int8_methods
                )
                accuracy["int8_gate_passed"] = True
        return outputs

    def write_golden_set(self, inputs: _Inputs, outputs: dict[str, np.ndarray]) -> None:
        """Step ``golden``: golden/ with FP32 outputs and per-precision tolerances, then ONNX Runtime's self-check."""
        idx, info = inputs.golden_idx, self.info
        with self.steps.step("golden") as record:
            chosen = [inputs.evaluated[i] for i in idx]
            fp32_golden = outputs["fp32"][idx]
            measured = {
                p: _compare(fp32_golden, outputs[p][idx], p, info, "golden set")
                for p in self.config.precisions
                if p != "fp32"
            }
            tolerance = golden_tolerances(self.config.golden, measured)
            record.files.extend(
                write_golden(
                    self.root / GOLDEN_DIR,
                    inputs.batch[idx],
                    chosen,
                    info,
                    self.contract,
                    fp32_golden,
                    tolerance,
                    _ort_reference(measured, outputs, idx),
                    held_out=inputs.held_out,
                )
            )
            self.report["golden"] = {
                "n": len(chosen),
                "class_counts": {
                    label: sum(1 for im in chosen if im.label == label) for label in info.labels
                },
                "tolerance": tolerance,
                "onnxruntime_self_check": self._golden_self_check(outputs, idx, fp32_golden, tolerance),
            }
            record.detail = f"{len(chosen)} test images, tolerances " + ", ".join(
                f"{k} {v:g}" for k, v in tolerance.items()
            )

    def _golden_self_check(
        self,
        outputs: dict[str, np.ndarray],
        idx: np.ndarray,
        fp32_golden: np.ndarray,
        tolerance: dict[str, float],
    ) -> dict[str, dict[str, Any]]:
        """Each precision's own ONNX Runtime outputs against the golden set, as the device will check them."""
        meta = {
            "fp32_outputs": fp32_golden.tolist(),
            "tolerance": tolerance,
            "decision_threshold": self.info.threshold,
        }
        return {p: golden_check(outputs[p][idx], meta, p, self.info) for p in self.config.precisions}

    def write_records(self) -> None:
        """Step ``records``: contract, model info, the run's model card (copied) and the export report."""
        with self.steps.step("records") as record:
            record.files.append(self.contract.save(self.root))
            record.files.append(self.info.save(self.root))
            self._copy_model_card(record)
            self.report["steps"] = [s.to_dict() for s in self.steps.results]
            record.files.append(write_report(self.root / REPORT_FILE, self.report))

    def _copy_model_card(self, record: _StepRecord) -> None:
        """The run's model card is copied, never moved: no input file is deleted or overwritten."""
        card = self.run.folder / run_layout.MODEL_CARD_FILE
        if not card.is_file():
            self.report["model_card"] = None
            record.detail = f"no {run_layout.MODEL_CARD_FILE} in {self.run.folder}; the bundle has none"
            return
        shutil.copyfile(card, self.root / MODEL_CARD_FILE)
        record.files.append(self.root / MODEL_CARD_FILE)
        self.report["model_card"] = MODEL_CARD_FILE

    def write_manifest(self) -> None:
        """Step ``manifest``: hash every file into manifest.json, then verify the folder against it."""
        with self.steps.step("manifest") as record:
            extra = {
                "precisions": list(self.config.precisions),
                "export_report": REPORT_FILE,
                "source_h5_sha256": self.report["source"]["h5_sha256"],
                "decision_threshold": self.info.threshold,
            }
            if self.info.synthetic:
                extra["warning"] = SYNTHETIC_WARNING
            write_manifest(self.root, extra=extra)
            verify_manifest(self.root)
            record.files.append(self.root / MANIFEST_FILE)
            record.detail = "every file hashed and verified"


def _new_bundle_report(run: RunFolder, config: BundleConfig) -> dict[str, Any]:
    """The export report's header: which run, which .h5 (by hash), which data, which settings."""
    return new_report(
        run.info,
        source={
            "run": str(run.folder),
            "h5": run.h5_path.name,
            "h5_sha256": sha256_file(run.h5_path),
            "split": str(run.split_path),
            "data_root": str(config.data_root) if config.data_root else None,
        },
        config=config.to_dict(),
    )


def _evaluated_test_images(run: RunFolder, config: BundleConfig) -> list[LabelledImage]:
    """The test split, or a class-balanced ``--eval-limit`` sample of it; an empty list is an error."""
    test_all = run.split_images("test", config.data_root)
    if not test_all:
        raise RunFolderError(
            f"{run.split_path}: the test list is empty; export measures every precision on it"
        )
    if not config.eval_limit:
        return test_all
    return balanced_sample(test_all, run.info.labels, config.eval_limit, seed=0)


def _int8_detail(settings: dict[str, Any], summary: dict[str, Any], result: ParityResult) -> str:
    """The int8 step line: Q/DQ node counts, parity, and what the float-layer and calibration searches did."""
    detail = f"{summary['quantize_linear']} Q / {summary['dequantize_linear']} DQ nodes, {result.describe()}"
    mixed = settings["mixed_precision"]
    if mixed:
        detail += (
            f"; {len(mixed['float_layers'])} layer(s) kept in float took the calibration-set diff from "
            f"{mixed['initial_max_diff']:.3g} to {mixed['final_max_diff']:.3g}"
            + ("" if mixed["target_met"] else f" (target {mixed['target_max_diff']:g} NOT met)")
        )
    auto = settings.get("auto_calibration") or {}
    tried, failed = auto.get("tried", {}), auto.get("failed", {})
    if len(tried) + len(failed) > 1:
        outcomes = [f"{m} {d:.3g}" if d is not None else m for m, d in tried.items()]
        detail += "; calibration " + ", ".join([*(f"{m} failed" for m in failed), *outcomes])
        detail += f", kept {settings['calibrate_method']}"
    return detail


def methods_tried(settings: dict[str, Any]) -> tuple[str, ...]:
    """Every calibration method the INT8 step ran, the failed ones included (``--calib-method auto`` runs several)."""
    auto = settings.get("auto_calibration") or {}
    tried = [*auto.get("failed", {}), *auto.get("tried", {})]
    return tuple(tried) if tried else (str(settings["calibrate_method"]),)


def _accuracy_section(
    results: dict[str, dict[str, Any]],
    outputs: dict[str, np.ndarray],
    precisions: tuple[str, ...],
    n_images: int,
    info: ModelInfo,
) -> dict[str, Any]:
    """The report's accuracy section: each precision's metrics, and each reduced one's drop against FP32."""
    accuracy: dict[str, Any] = {"split": "test", "n_images": n_images, "backend": "onnxruntime cpu"}
    accuracy.update({p: results[p] for p in precisions})
    for p in precisions:
        if p != "fp32":
            accuracy[f"{p}_vs_fp32"] = {
                "accuracy_drop_points": round(accuracy_drop_points(results, p), 3),
                "sensitivity_drop_points": round(sensitivity_drop_points(results, p), 3),
                "outputs": _compare(outputs["fp32"], outputs[p], p, info, "test split").to_dict(),
            }
    return accuracy


def _ort_reference(
    measured: dict[str, ParityResult], outputs: dict[str, np.ndarray], idx: np.ndarray
) -> dict[str, dict[str, Any]]:
    """What ONNX Runtime itself gave for each reduced precision on the golden images, kept for the device's report."""
    return {
        p: {
            "max_abs_diff": r.max_abs_diff,
            "decision_agreement": r.decision_agreement,
            "outputs": np.asarray(outputs[p][idx], dtype=np.float64).round(8).tolist(),
        }
        for p, r in measured.items()
    }


def _subset(pool: list[LabelledImage], chosen: list[LabelledImage]) -> np.ndarray:
    index = {image.path: i for i, image in enumerate(pool)}
    return np.array([index[image.path] for image in chosen], dtype=np.int64)


def _compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    precision: str,
    info: Any,
    images: str = "test split, class-balanced",
) -> ParityResult:
    return compare_outputs(
        reference,
        candidate,
        info,
        reference_name="onnx fp32",
        candidate_name=f"onnx {precision}",
        images=images,
    )


def summary_rows(report: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """One row per precision for the CLI's summary table."""
    rows = []
    accuracy = report.get("accuracy", {})
    for precision, name in ONNX_FOR_PRECISION.items():
        path = root / name
        if precision not in accuracy or not path.is_file():
            continue
        if precision == "fp32":
            parity = report["onnx"]["parity"]
            versus = "keras"
        else:
            parity = accuracy[f"{precision}_vs_fp32"]["outputs"]
            versus = "onnx fp32"
        rows.append(
            {
                "precision": precision,
                "file": name,
                "mb": path.stat().st_size / 1e6,
                "versus": versus,
                "max_abs_diff": parity["max_abs_diff"],
                "agreement": parity["decision_agreement"],
                **headline(accuracy[precision]),
            }
        )
    return rows
