"""Where and how a run computes: seeds and determinism, devices, mixed precision, distribution.

Everything here changes process-wide framework state (Keras' global dtype
policy, TensorFlow's op determinism), so :func:`compute_session` sets it for
one training run and puts the dtype policy back afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from train.errors import MissingDependencyError, TrainError

# Written beside every run besides Keras itself: model.h5 needs h5py, the run's plots matplotlib.
RUN_FOLDER_MODULES = ("h5py", "matplotlib")


@dataclass
class ComputeSession:
    """What a run actually used; recorded in the model card."""

    backend: str
    devices: list[str]
    gpus: int
    mixed_precision: bool
    strategy: str
    deterministic: bool
    seed: int
    scope: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "devices": self.devices,
            "gpus": self.gpus,
            "mixed_precision": self.mixed_precision,
            "strategy": self.strategy,
            "deterministic": self.deterministic,
            "seed": self.seed,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        }


def keras_backend_name() -> str:
    """The backend Keras will load, found where Keras looks (KERAS_BACKEND, then keras.json), unimported."""
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as handle:
            configured = json.load(handle).get("backend")
    except (OSError, ValueError, AttributeError):
        configured = None
    return str(configured) if configured else "tensorflow"


def require_keras(what: str, also: tuple[str, ...] = ()) -> None:
    """MissingDependencyError with the install command when Keras, its backend or ``also`` is missing.

    Called after the command line is parsed and before any data is read or folder created: on the
    lean edge install (no TensorFlow) a training command then fails at once, leaving nothing behind.
    """
    from edge_runtime.extras import missing_message, missing_modules

    missing = missing_modules(("keras", keras_backend_name(), *also))
    if missing:
        raise MissingDependencyError(missing_message(what, missing, "train"))


def gpu_names() -> list[str]:
    """Visible GPUs of the active Keras backend (empty on CPU-only machines)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform == "gpu"]
    return []


def seed_everything(seed: int, deterministic: bool) -> bool:
    """Seed Python, numpy and the backend; on TensorFlow also make ops deterministic. Returns whether it did."""
    import keras

    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Deterministic kernels on CPU cost little; on GPU some are slower, and some ops then raise
        # instead of running non-deterministically (which is the point).
        tf.config.experimental.enable_op_determinism()
        return True
    return False


@contextlib.contextmanager
def compute_session(
    seed: int, deterministic: bool, mixed_precision: str, strategy: str
) -> Iterator[ComputeSession]:
    """Seed, pick the dtype policy and the distribution strategy for one run; restore the policy after."""
    import keras

    backend = keras.backend.backend()
    gpus = gpu_names()
    if mixed_precision == "on" and not gpus:
        raise TrainError("--mixed-precision on needs a GPU and none is visible; use auto or off")
    use_mixed = bool(gpus) and mixed_precision in ("auto", "on")
    scope: Any = contextlib.nullcontext()
    if strategy == "mirrored":
        if backend != "tensorflow":
            raise TrainError(
                f"--strategy mirrored needs the TensorFlow backend (KERAS_BACKEND is {backend!r})"
            )
        import tensorflow as tf

        scope = tf.distribute.MirroredStrategy().scope()
    was_deterministic = seed_everything(seed, deterministic)
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    try:
        yield ComputeSession(
            backend=backend,
            devices=gpus or ["cpu"],
            gpus=len(gpus),
            mixed_precision=use_mixed,
            strategy=strategy,
            deterministic=was_deterministic,
            seed=seed,
            scope=scope,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
