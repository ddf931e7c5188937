"""``pneumo bench --auto`` (what ``make bench`` runs): find what a benchmark needs in this checkout.

* the bundle: the newest folder with a valid manifest under ``bundles/`` or
  ``demo/`` (``make demo`` exports ``demo/bundle``);
* the Keras reference: the run folder the bundle's model card names, else a
  ``runs/*`` or ``demo/*`` run folder whose model_info.json has the bundle's
  model version;
* test images: that run's split.json (used by the benchmark itself); for a
  bundle trained on real X-rays, the real data set's ``test/`` when the run
  has no split.json;
* watch-daemon images: the real data set (read only) when present, else the
  test folder.

Nothing is created or trained here; when no bundle exists the error says
which command makes one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.errors import BenchInputError
from benchmarks.keras_reference import not_the_bundles_model, run_dir_from_bundle
from edge_runtime.bundle import MANIFEST_FILE, Bundle
from edge_runtime.contract import ModelInfo
from edge_runtime.errors import EdgeError
from edge_runtime.run_layout import MODEL_FILE, SPLIT_FILE

BUNDLE_PARENTS = ("bundles", "demo")
RUN_PARENTS = ("runs", "demo")
NO_BUNDLE_HELP = (
    "no deployment bundle found under bundles/ or demo/. Make one first:\n"
    "  make demo                                   # SYNTHETIC demo: train, export demo/bundle\n"
    "  pneumo export bundle runs/NAME -o bundles/NAME   # from a trained run folder\n"
    "then run 'make bench' again, or 'pneumo bench BUNDLE --keras RUN' yourself"
)


@dataclass(frozen=True)
class AutoPlan:
    bundle: Path
    keras: Path | None
    data: Path | None
    watch_images: Path | None
    notes: list[str] = field(default_factory=list)


def real_data_root(base: Path) -> Path | None:
    """The Kermany data set: $PNEUMO_DATA, else ../shared/data/chest_xray beside the checkout."""
    candidates = [Path(os.environ["PNEUMO_DATA"])] if os.environ.get("PNEUMO_DATA") else []
    candidates.append(base.resolve().parent / "shared" / "data" / "chest_xray")
    return next((c for c in candidates if (c / "test").is_dir()), None)


def find_bundles(base: Path) -> list[Path]:
    """Bundle folders (with a manifest) under bundles/ and demo/, newest manifest first."""
    found = []
    for parent in BUNDLE_PARENTS:
        folder = base / parent
        if not folder.is_dir():
            continue
        for manifest in folder.glob(f"*/{MANIFEST_FILE}"):
            found.append(manifest.parent)
        if (folder / MANIFEST_FILE).is_file():
            found.append(folder)
    return sorted(set(found), key=lambda p: (p / MANIFEST_FILE).stat().st_mtime, reverse=True)


def find_run_for(base: Path, bundle: Bundle) -> Path | None:
    """The run folder that produced ``bundle``: named by its model card, else matched by model version."""
    named = run_dir_from_bundle(bundle.root)
    if named is not None and not_the_bundles_model(named / MODEL_FILE, bundle.manifest) is None:
        return named
    for parent in RUN_PARENTS:
        for info_path in (
            sorted((base / parent).glob("*/model_info.json")) if (base / parent).is_dir() else []
        ):
            run = info_path.parent
            try:
                info = ModelInfo.load(info_path)
            except EdgeError:
                continue
            # a model version names a recipe, not one training: the .h5's sha256 decides
            if (
                info.model_version == bundle.info.model_version
                and (run / MODEL_FILE).is_file()
                and not_the_bundles_model(run / MODEL_FILE, bundle.manifest) is None
            ):
                return run
    return None


def plan_auto(base: Path = Path("."), bundle_path: Path | None = None) -> AutoPlan:
    """Pick bundle (unless given), Keras run, test images and watch images; raise with the next command when none."""
    problems = []
    bundle = Bundle.open(bundle_path) if bundle_path is not None else None
    for candidate in [] if bundle is not None else find_bundles(base):
        try:
            bundle = Bundle.open(candidate)
            break
        except EdgeError as exc:
            problems.append(f"{candidate}: {exc}")
    if bundle is None:
        detail = ("\nunusable bundles:\n  " + "\n  ".join(problems)) if problems else ""
        raise BenchInputError(NO_BUNDLE_HELP + detail)
    notes = [f"--auto: bundle {bundle.root}" + ("" if bundle_path else " (newest valid manifest)")]
    run = find_run_for(base, bundle)
    notes.append(
        f"--auto: Keras reference {run}"
        if run
        else "--auto: no run folder holding the model.h5 this bundle was exported from (same sha256)"
    )
    real = real_data_root(base)
    data = None
    run_has_split = run is not None and (run / SPLIT_FILE).is_file()
    # A SYNTHETIC model is only scored on its own phantom test split, never on X-rays.
    if not run_has_split and real is not None and not bundle.info.synthetic:
        data = real / "test"
        notes.append(f"--auto: test images from {data}")
    watch_images = real if real is not None else data
    if watch_images is None:
        notes.append("--auto: watch-daemon benchmark skipped (no image folder; pass --watch-images DIR)")
    return AutoPlan(bundle=bundle.root, keras=run, data=data, watch_images=watch_images, notes=notes)
