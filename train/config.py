"""``TrainConfig``: every setting of one training run, typed, bounded, saved as ``config.json``.

Precedence: dataclass defaults < the architecture's recipe (``train.models``)
< an optional TOML file (``--config``) < command-line flags. Fields left at
``None`` mean "the architecture's default"; :meth:`TrainConfig.resolved` fills
them in, and that resolved copy is what trains and what is saved beside the
model, so a run folder says exactly what produced it.
"""

from __future__ import annotations

import inspect
import math
import sys
import types
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from edge_runtime.contract import ColorMode, Interpolation, ResizeMode
from train.errors import ConfigError, TrainError

CONFIG_FILE = "config.json"
# Where the decode cache lives when nothing names a folder: the command line passes --cache-dir, else
# $PNEUMO_CACHE, else this (train.cli.cache_root); a library caller that passes no folder gets this too.
DEFAULT_CACHE_DIR = Path("~/.cache/pneumo-edge")

OPTIMIZERS = ("adagrad", "adam", "adamw", "adamax", "rmsprop", "sgd", "adadelta")
AUGMENTATIONS = (
    "none",
    "flip",
    "light",
    "xray",
    "xray-balanced",
    "xray-aspect",
    "xray-shape",
    "seed001",
    "seed004",
    "seed004-resnet",
)
# The enumerated settings: each a Literal (what the type checker sees) and the tuple of its values
# (what the flags' choices and the checks of a --config file use), taken from the Literal.
LossName = Literal["crossentropy", "focal"]
LrSchedule = Literal["constant", "cosine"]
# Where the threshold rule looks: the validation outputs, or those pooled with the shape probe's variants.
ThresholdSource = Literal["validation", "shape-pooled"]
HeadChoice = Literal["auto", "sigmoid", "softmax"]
LabelMode = Literal["binary", "kind"]
SplitMode = Literal["patient", "random"]
# What --split random shuffles: the official train folder (as seed 000 did), or train, val and test pooled.
RandomPool = Literal["train", "all"]
SourcesMode = Literal["all", "original"]
Strategy = Literal["default", "mirrored"]
MixedPrecision = Literal["auto", "on", "off"]
Activation = Literal["relu", "sigmoid"]

LOSSES: tuple[LossName, ...] = get_args(LossName)
LR_SCHEDULES: tuple[LrSchedule, ...] = get_args(LrSchedule)
THRESHOLD_SOURCES: tuple[ThresholdSource, ...] = get_args(ThresholdSource)
HEADS: tuple[HeadChoice, ...] = get_args(HeadChoice)
COLORS: tuple[ColorMode, ...] = get_args(ColorMode)
INTERPOLATIONS: tuple[Interpolation, ...] = get_args(Interpolation)
RESIZES: tuple[ResizeMode, ...] = get_args(ResizeMode)
LABEL_MODES: tuple[LabelMode, ...] = get_args(LabelMode)
SPLIT_MODES: tuple[SplitMode, ...] = get_args(SplitMode)
RANDOM_POOLS: tuple[RandomPool, ...] = get_args(RandomPool)
SOURCES: tuple[SourcesMode, ...] = get_args(SourcesMode)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
MIXED_PRECISION: tuple[MixedPrecision, ...] = get_args(MixedPrecision)
ACTIVATIONS: tuple[Activation, ...] = get_args(Activation)

# Model settings -> the keyword of the builders (train/models) that take them. Which architectures
# accept a setting is read from the builders' signatures, so a builder gaining an argument is all it takes.
MODEL_OPTIONS: dict[str, str] = {
    "weights": "weights",
    "freeze_base": "freeze_base",
    "dropout": "dropout",
    "width_multiplier": "width",
    "activation": "activation",
    "last_conv_filters": "last_filters",
    "pool_dropout": "pool_dropout",
}

_PATH_FIELDS = ("data", "out", "weights", "cache_dir", "teacher")


def flag(name: str) -> str:
    """The command-line flag of a config field: learning_rate -> --learning-rate."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``None`` = take the architecture's default (see :meth:`resolved`)."""

    arch: str = "dsconv"
    data: Path | None = None
    out: Path | None = None
    overwrite: bool = False
    # --- model
    head: HeadChoice = "auto"
    weights: Path | None = None  # local ImageNet file: *_notop.h5 (vgg16_transfer, resnet50), .pth (lite0)
    freeze_base: bool | None = None
    dropout: float | None = None
    width_multiplier: float = 1.0  # dsconv channel multiplier
    activation: Activation | None = None  # sutd_cnn1/2/3 hidden (default: sigmoid/sigmoid/relu)
    last_conv_filters: int | None = None  # roskilde's last convolution (default 128; study rows 4-7: 256)
    pool_dropout: float | None = None  # roskilde: Dropout after every pooling layer (default 0 = none)
    # --- preprocessing contract
    height: int | None = None
    width: int | None = None
    color: ColorMode | None = None
    interpolation: Interpolation = "area"
    resize: ResizeMode = "stretch"
    # --- data and splits
    label_mode: LabelMode = "binary"
    split_mode: SplitMode = "patient"
    val_fraction: float = 0.1  # patient mode only (random mode's shares are fixed at 70/20/10)
    random_pool: RandomPool = "train"  # random mode only
    sources: SourcesMode = "all"
    undersample: bool | None = None
    max_per_class: int | None = None
    exclude_test_patients: bool = False
    # --- recipe
    optimizer: str | None = None
    learning_rate: float | None = None
    # "cosine": decay from learning_rate to 1% of it over all planned steps (Loshchilov & Hutter 2017,
    # without restarts), so the last epochs take small steps and the final weights are settled.
    lr_schedule: LrSchedule = "constant"
    batch_size: int | None = None
    epochs: int | None = None
    early_stopping: int | None = None  # patience in epochs, 0 = off
    class_weights: bool | None = None
    augment: str | None = None
    loss: LossName = "crossentropy"
    focal_gamma: float = 2.0
    label_smoothing: float | None = None
    # Mixup (Zhang et al. 2018): blend image pairs within a batch, and their targets and weights, with
    # lambda ~ Beta(alpha, alpha) per batch; 0 = off.
    mixup: float = 0.0
    # Distillation: train on (1 - w) * label + w * the teacher's probability (a run or ensemble folder
    # with the same contract and split; its outputs on the unaugmented training images).
    teacher: Path | None = None
    distill_weight: float = 0.5
    threshold_rule: str | None = None  # on validation; None: the architecture's (sensitivity:0.95 for all)
    threshold_on: ThresholdSource | None = None  # None: the architecture's
    # --- run
    seed: int = 0
    # The patient-wise validation split's own seed; None: follow ``seed``. Fixing it lets repeats of a
    # recipe with other seeds be judged (and ensembled) on the same validation images.
    split_seed: int | None = None
    deterministic: bool = True
    strategy: Strategy = "default"
    mixed_precision: MixedPrecision = "auto"
    cache_dir: Path | None = None
    workers: int = 2
    bootstrap: int = 1000
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(str(value)).expanduser())
        self._validate()

    # ------------------------------------------------------------------ validation

    def _validate(self) -> None:
        _choice("head", self.head, HEADS)
        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        _choice("resize", self.resize, RESIZES)
        _choice("label_mode", self.label_mode, LABEL_MODES)
        _choice("split_mode", self.split_mode, SPLIT_MODES)
        _choice("random_pool", self.random_pool, RANDOM_POOLS)
        _choice("sources", self.sources, SOURCES)
        _choice("loss", self.loss, LOSSES)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.threshold_on is not None:
            _choice("threshold_on", self.threshold_on, THRESHOLD_SOURCES)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if self.color is not None:
            _choice("color", self.color, COLORS)
        if self.optimizer is not None:
            _choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.augment is not None:
            _choice("augment", self.augment, AUGMENTATIONS)
        if self.activation is not None:
            _choice("activation", self.activation, ACTIVATIONS)
        _bounded("val_fraction", self.val_fraction, 0.01, 0.5)
        _bounded("width_multiplier", self.width_multiplier, 0.25, 4.0)
        _bounded("focal_gamma", self.focal_gamma, 0.0, 10.0)
        _bounded("distill_weight", self.distill_weight, 0.0, 1.0)
        _bounded("mixup", self.mixup, 0.0, 2.0)
        _bounded("seed", self.seed, 0, 2**31 - 1)
        if self.split_seed is not None:
            _bounded("split_seed", self.split_seed, 0, 2**31 - 1)
        _bounded("workers", self.workers, 1, 64)
        _bounded("bootstrap", self.bootstrap, 0, 100_000)
        for name, low, high in (
            ("height", 16, 2048),
            ("width", 16, 2048),
            ("dropout", 0.0, 0.95),
            ("pool_dropout", 0.0, 0.95),
            ("last_conv_filters", 1, 4096),
            ("max_per_class", 1, 10_000_000),
            ("label_smoothing", 0.0, 0.5),
            ("learning_rate", 1e-7, 10.0),
            ("batch_size", 1, 4096),
            ("epochs", 1, 10_000),
            ("early_stopping", 0, 1000),
        ):
            value = getattr(self, name)
            if value is not None:
                _bounded(name, value, low, high)
        from edge_runtime.metrics import MetricsError, parse_threshold_rule

        try:
            if self.threshold_rule is not None:
                parse_threshold_rule(self.threshold_rule)
        except MetricsError as exc:
            raise ConfigError(f"--threshold-rule: {exc}") from None

    # ------------------------------------------------------------------ resolution

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` recipe field set from the architecture's defaults."""
        from train.models import get_arch

        spec = get_arch(self.arch)
        self.model_options()  # an option --arch does not take fails here, before any data is read
        return replace(
            self,
            height=self.height or spec.height,
            width=self.width or spec.width,
            color=self.color or spec.color,
            optimizer=self.optimizer or spec.optimizer,
            learning_rate=self.learning_rate or spec.learning_rate,
            batch_size=self.batch_size or spec.batch_size,
            epochs=self.epochs or spec.epochs,
            early_stopping=spec.early_stopping if self.early_stopping is None else self.early_stopping,
            class_weights=spec.class_weights if self.class_weights is None else self.class_weights,
            augment=self.augment or spec.augment,
            undersample=spec.undersample if self.undersample is None else self.undersample,
            label_smoothing=spec.label_smoothing if self.label_smoothing is None else self.label_smoothing,
            threshold_rule=self.threshold_rule or spec.threshold_rule,
            threshold_on=self.threshold_on or spec.threshold_on,
            weights=self.weights or (spec.default_weights() if spec.default_weights else None),
        )

    def model_options(self) -> dict[str, Any]:
        """The builder keywords this config sets, for :func:`train.models.build_model`.

        A model setting given for an architecture whose builder does not take it
        is a ConfigError naming the flag and the architectures that do, never
        silently dropped. ``width_multiplier`` counts as given when it is not 1.
        """
        from train.models import ARCHITECTURES, get_arch

        builder = get_arch(self.arch).builder
        options: dict[str, Any] = {}
        for name, keyword in MODEL_OPTIONS.items():
            value = getattr(self, name)
            if value is None or (name == "width_multiplier" and value == 1.0):
                continue
            if keyword not in builder_keywords(builder):
                takers = [
                    arch for arch, spec in ARCHITECTURES.items() if keyword in builder_keywords(spec.builder)
                ]
                raise ConfigError(
                    f"{flag(name)} does not apply to --arch {self.arch}; it is an option of "
                    f"{', '.join(takers)}: remove it or choose one of those architectures"
                )
            options[keyword] = value
        return options

    def model_settings(self) -> dict[str, Any]:
        """Every model setting --arch takes (weights aside) with the value it builds with.

        That is this config's value, else the builder's default: what the model card records.
        """
        from train.models import get_arch

        keywords = builder_keywords(get_arch(self.arch).builder)
        given = self.model_options()
        return {
            name: given.get(keyword, keywords[keyword])
            for name, keyword in MODEL_OPTIONS.items()
            if keyword in keywords and name != "weights"
        }

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in _PATH_FIELDS:
            if data[name] is not None:
                data[name] = str(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from plain values (TOML or JSON); keys may be snake_case or kebab-case."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name == "image_size":
                values.setdefault("height", value)
                values.setdefault("width", value)
                continue
            if name not in known:
                raise ConfigError(
                    f"{source}: unknown setting {key!r}; see 'pneumo train --help' for the valid ones"
                )
            values[name] = value
        _check_types(values, source)
        return cls(**values)


def builder_keywords(builder: Any) -> dict[str, Any]:
    """A model builder's named keyword arguments and their defaults (its ``**_`` catch-all excluded)."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(builder).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        and parameter.default is not parameter.empty
    }


def _check_types(values: dict[str, Any], source: str) -> None:
    """Reject wrong value types from a TOML file with the setting's name (flags are typed by argparse)."""
    for name, value in values.items():
        kind = _FIELD_KINDS.get(name)
        if value is None or kind is None:
            continue
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{source}: {name} must be an integer, got {value!r}")
        if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
        if kind is str and not isinstance(value, str):
            raise ConfigError(f"{source}: {name} must be a string, got {value!r}")


def _value_kind(hint: Any) -> type | None:
    """The plain type a value of a field typed ``hint`` has (``X | None`` -> X, a Literal of str -> str)."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [arg for arg in get_args(hint) if arg is not type(None)]
        hint = args[0] if len(args) == 1 else None
    if get_origin(hint) is Literal:
        return str
    return hint if hint in (bool, int, float, str) else None


# Field -> the plain type a --config value must have; Path fields take any value (made a Path).
_FIELD_KINDS: dict[str, type | None] = {
    name: _value_kind(hint) for name, hint in get_type_hints(TrainConfig).items()
}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{flag(name)} {value!r}: expected one of {', '.join(allowed)}")


def _bounded(name: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{flag(name)} {value!r}: must be within {low:g}..{high:g}")


def load_toml(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML config file (top level, or a ``[train]`` table)."""
    source = Path(path).expanduser()
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 (JetPack 6)
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise TrainError(
                f"--config {source}: reading TOML on Python 3.10 needs 'pip install tomli'"
            ) from exc
    try:
        with open(source, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise TrainError(f"--config {source}: file not found") from None
    except (OSError, ValueError) as exc:
        raise TrainError(f"--config {source}: not a readable TOML file ({exc})") from None
    table = data.get("train", data)
    if not isinstance(table, dict):
        raise ConfigError(f"--config {source}: [train] must be a table of settings")
    outside = sorted(key for key in data if key != "train") if "train" in data else []
    if outside:
        # Only the [train] table is read when there is one; keys above its header would be lost.
        raise ConfigError(
            f"--config {source}: setting(s) {', '.join(outside)} sit above the [train] table and would be "
            "ignored; move them below the [train] header, or remove the header to keep every setting at the "
            "top level"
        )
    return dict(table)


def merge(toml_values: dict[str, Any], flag_values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Flags override the TOML file, which overrides the defaults."""
    merged = {str(k).replace("-", "_"): v for k, v in toml_values.items()}
    flags = {k: v for k, v in flag_values.items() if v is not None}
    merged.update(flags)
    check_distillation(merged, source, flag_given="distill_weight" in flags)
    check_split_options(merged, source, flags_given=set(flags))
    return TrainConfig.from_dict(merged, source=source)


DEFAULT_DISTILL_WEIGHT = next(f.default for f in fields(TrainConfig) if f.name == "distill_weight")


def check_distillation(values: dict[str, Any], source: str = "config", flag_given: bool = False) -> None:
    """ConfigError when ``values`` set a distillation weight but no teacher: the weight would do nothing.

    ``distill_weight`` has a plain default (0.5), and the sweep's configs/NAME.toml and config.json
    write every setting out, the default included, without a teacher. So a weight counts as set when
    the --distill-weight flag was given (``flag_given``: argparse leaves absent flags out), or when a
    file gives a value other than the default.
    """
    named = {str(k).replace("-", "_"): v for k, v in values.items()}
    weight = named.get("distill_weight")
    if weight is None or named.get("teacher") not in (None, ""):
        return
    if flag_given or weight != DEFAULT_DISTILL_WEIGHT:
        raise ConfigError(
            f"{source}: --distill-weight {weight} has no effect without --teacher; add --teacher RUN (a run or "
            "'pneumo train ensemble' folder to distil from) or drop --distill-weight"
        )


# The split options that one split mode alone reads: that mode, what the option does, what to do instead.
SPLIT_MODE_OPTIONS: Mapping[str, tuple[SplitMode, str]] = MappingProxyType(
    {
        "val_fraction": (
            "patient",
            "random mode's shares are fixed at seed 000's 70/20/10 (train/val/test); drop --val-fraction, or use "
            "{split} patient to carve validation by patient",
        ),
        "random_pool": (
            "random",
            "it chooses which folders {split} random shuffles; drop --random-pool, or add {split} random",
        ),
    }
)
_FIELD_DEFAULTS: Mapping[str, Any] = MappingProxyType({f.name: f.default for f in fields(TrainConfig)})


def check_split_options(
    values: dict[str, Any],
    source: str = "config",
    flags_given: Collection[str] = (),
    split_flag: str = "--split",
) -> None:
    """ConfigError when ``values`` set a split option that their split mode ignores.

    As for distill_weight, the sweep's configs/NAME.toml and config.json write every setting out,
    defaults included, so an option counts as set when its flag was given (``flags_given``: snake_case
    names), or when a file gives a value other than the default. ``split_flag``: what the command
    calls the split mode (``pneumo data split``: --split-mode).
    """
    named = {str(k).replace("-", "_"): v for k, v in values.items()}
    mode = named.get("split_mode") or _FIELD_DEFAULTS["split_mode"]
    for name, (applies, why) in SPLIT_MODE_OPTIONS.items():
        value = named.get(name)
        if value is None or mode == applies:
            continue
        if name in flags_given or value != _FIELD_DEFAULTS[name]:
            raise ConfigError(
                f"{source}: {flag(name)} {value} has no effect with {split_flag} {mode}: "
                + why.format(split=split_flag)
            )
