"""The data contract shared by training, export and the edge runtime.

Two small typed records travel with every model, every run folder and every
bundle:

* :class:`PreprocessContract` says how a decoded image becomes the model's
  input: size, colour mode, interpolation, resize mode, and the scaling that
  the model graph itself applies. The runtime feeds ``uint8`` pixels; the
  ``Rescaling`` layer inside the model (and so inside every ONNX file and
  engine) does ``x * scale + offset``, so no runtime can forget to scale and
  host-to-device copies are 4x smaller than float32.
* :class:`ModelInfo` says what the output means: class labels, which label is
  "normal", the decision threshold chosen on validation, the model version and
  whether the model was trained on SYNTHETIC images.

A mismatch here silently ruins a medical model, so both are validated when
loaded and the one implementation of the contract is
:func:`edge_runtime.preprocess.apply_contract`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from edge_runtime.errors import ContractError
from edge_runtime.fileio import atomic_write_json

CONTRACT_FILE = "contract.json"
MODEL_INFO_FILE = "model_info.json"
CONTRACT_SCHEMA = 1

ColorMode = Literal["grayscale", "rgb"]
Interpolation = Literal["area", "linear", "cubic", "nearest", "lanczos"]
ResizeMode = Literal["stretch", "letterbox", "center_crop"]

INTENDED_USE = (
    "Decision support for a trained clinician reading a paediatric chest X-ray. "
    "Not a diagnosis; not validated for clinical use."
)
SYNTHETIC_WARNING = "SYNTHETIC: trained on procedural phantom images, not X-rays. Demo only."

REQUIRED_MODEL_INFO_KEYS = ("model_version", "arch", "threshold", "synthetic")

_COLOR_MODES = ("grayscale", "rgb")
_INTERPOLATIONS = ("area", "linear", "cubic", "nearest", "lanczos")
_RESIZE_MODES = ("stretch", "letterbox", "center_crop")


@dataclass(frozen=True)
class PreprocessContract:
    """How a decoded image becomes a model input. Saved with every model.

    ``resize="stretch"`` squashes to ``height x width`` ignoring aspect ratio:
    3,585 of the Kermany training images only exist as 224x224 squashed copies,
    so squashing every image the same way makes train and test images alike.
    """

    height: int = 224
    width: int = 224
    color: ColorMode = "grayscale"
    interpolation: Interpolation = "area"
    resize: ResizeMode = "stretch"
    # Applied inside the model graph, never by the runtime: y = x * scale + offset.
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    # uint8 NHWC is what every backend receives.
    dtype: str = "uint8"
    layout: str = "NHWC"
    schema: int = CONTRACT_SCHEMA

    def __post_init__(self) -> None:
        if not (8 <= self.height <= 2048 and 8 <= self.width <= 2048):
            raise ContractError(f"contract size {self.height}x{self.width} is outside 8..2048 pixels")
        if self.color not in _COLOR_MODES:
            raise ContractError(f"contract color {self.color!r}: expected one of {_COLOR_MODES}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ContractError(
                f"contract interpolation {self.interpolation!r}: expected one of {_INTERPOLATIONS}"
            )
        if self.resize not in _RESIZE_MODES:
            raise ContractError(f"contract resize {self.resize!r}: expected one of {_RESIZE_MODES}")
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.offset)):
            raise ContractError(
                f"contract scale {self.scale} / offset {self.offset} must be finite, scale > 0"
            )
        if self.dtype != "uint8" or self.layout != "NHWC":
            raise ContractError("contract dtype/layout must be uint8/NHWC (what every backend receives)")
        if self.schema != CONTRACT_SCHEMA:
            raise ContractError(
                f"contract schema {self.schema} is not the supported {CONTRACT_SCHEMA}: "
                "re-export the model with this version of pneumo-edge"
            )

    @property
    def channels(self) -> int:
        return 1 if self.color == "grayscale" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, channels): one image as the model receives it."""
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "contract") -> PreprocessContract:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ContractError(f"{source}: unknown contract keys {unknown}; expected only {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ContractError(f"{source}: {exc}") from exc

    def save(self, folder_or_file: str | Path) -> Path:
        path = _target(folder_or_file, CONTRACT_FILE)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder_or_file: str | Path) -> PreprocessContract:
        path = _target(folder_or_file, CONTRACT_FILE)
        return cls.from_dict(_read(path, "preprocessing contract"), source=str(path))

    def describe(self) -> str:
        return (
            f"{self.height}x{self.width} {self.color}, {self.resize} resize with {self.interpolation} "
            f"interpolation, uint8 in, x*{self.scale:.6g}+{self.offset:g} inside the model"
        )


@dataclass(frozen=True)
class ModelInfo:
    """What a model's output means. Saved with every run folder and bundle."""

    model_version: str
    arch: str
    labels: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
    negative_label: str = "NORMAL"
    # Decision threshold on P(abnormal), chosen on the validation split only.
    threshold: float = 0.5
    head: Literal["sigmoid", "softmax"] = "sigmoid"
    synthetic: bool = False
    threshold_rule: str = "fixed 0.5"
    intended_use: str = INTENDED_USE
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if len(self.labels) < 2:
            raise ContractError(f"model info needs at least two labels, got {self.labels}")
        if self.negative_label not in self.labels:
            raise ContractError(f"negative label {self.negative_label!r} is not one of {self.labels}")
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, (int, float))
            or not (0.0 <= self.threshold <= 1.0)
        ):
            raise ContractError(f"threshold {self.threshold!r} must be a number within [0, 1]")
        if not isinstance(self.synthetic, bool):
            raise ContractError(f"synthetic {self.synthetic!r} must be true or false")
        if self.head == "sigmoid" and len(self.labels) != 2:
            raise ContractError("a sigmoid head has exactly two labels")
        if self.head not in ("sigmoid", "softmax"):
            raise ContractError(f"head {self.head!r}: expected 'sigmoid' or 'softmax'")

    @property
    def positive_label(self) -> str:
        """The label reported when P(abnormal) >= threshold (binary) ."""
        others = [label for label in self.labels if label != self.negative_label]
        return others[0] if len(others) == 1 else "ABNORMAL"

    @property
    def n_outputs(self) -> int:
        return 1 if self.head == "sigmoid" else len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model info") -> ModelInfo:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ContractError(f"{source}: unknown model info keys {unknown}")
        # A saved file must state these: a silent default threshold of 0.5, or a
        # SYNTHETIC demo model shown without its warning, would look like a real result.
        missing = [key for key in REQUIRED_MODEL_INFO_KEYS if key not in data]
        if missing:
            raise ContractError(
                f"{source}: model info lacks {missing}; every saved model states its decision threshold "
                "and whether it was trained on SYNTHETIC images. Re-export the model"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ContractError(f"{source}: {exc}") from exc

    def save(self, folder_or_file: str | Path) -> Path:
        path = _target(folder_or_file, MODEL_INFO_FILE)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder_or_file: str | Path) -> ModelInfo:
        path = _target(folder_or_file, MODEL_INFO_FILE)
        return cls.from_dict(_read(path, "model info"), source=str(path))


def _target(folder_or_file: str | Path, default_name: str) -> Path:
    path = Path(folder_or_file)
    return path / default_name if path.is_dir() or not path.suffix else path


def _read(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ContractError(f"{path}: {what} file not found; every run folder and bundle must have one")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"{path}: cannot read {what} as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ContractError(f"{path}: {what} must be a JSON object")
    return data
