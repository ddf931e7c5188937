"""From decoded uint8 arrays to training batches: tf.data on TensorFlow, a PyDataset elsewhere.

Images stay ``uint8`` in memory (one copy) and are cast to float32 per batch;
nothing is decoded per epoch. Each element is ``(pixels, target, weight)``:
targets are (N, 1) floats for a sigmoid head and one-hot rows for a softmax
head (label smoothing needs them); the weight carries the class weights, so
both paths weight the loss the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from train.models.blocks import Head

if TYPE_CHECKING:
    from train.augment import Augmenter, Mixup


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Seed 004's weights N / (n_classes * N_class); classes absent from ``y`` get 0."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
    total = float(counts.sum())
    return {i: (total / (n_classes * float(c)) if c else 0.0) for i, c in enumerate(counts)}


def targets(y: np.ndarray, head: Head) -> np.ndarray:
    """Training targets for ``head`` from class indices."""
    y = np.asarray(y, dtype=np.int64)
    if head.kind == "sigmoid":
        return y.astype(np.float32).reshape(-1, 1)
    return np.eye(head.n_classes, dtype=np.float32)[y]


def distillation_targets(hard: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * hard targets + weight * the teacher's outputs, same shape."""
    hard = np.asarray(hard, dtype=np.float32)
    teacher = np.asarray(teacher, dtype=np.float32).reshape(hard.shape)
    return ((1.0 - weight) * hard + weight * teacher).astype(np.float32)


def sample_weights(y: np.ndarray, weights: dict[int, float] | None) -> np.ndarray:
    if not weights:
        return np.ones(len(y), dtype=np.float32)
    table = np.array([weights.get(i, 1.0) for i in range(max(weights) + 1)], dtype=np.float32)
    return table[np.asarray(y, dtype=np.int64)]


def using_tensorflow() -> bool:
    import keras

    return bool(keras.backend.backend() == "tensorflow")


def training_data(
    x: np.ndarray,
    y: np.ndarray,
    head: Head,
    batch_size: int,
    augmenter: Augmenter | None = None,
    weights: dict[int, float] | None = None,
    seed: int = 0,
    shuffle: bool = True,
    soft_targets: np.ndarray | None = None,
    mixup: Mixup | None = None,
) -> Any:
    """Shuffled, augmented, weighted batches for ``model.fit``.

    ``soft_targets`` (distillation) replace the one-hot/0-1 targets; class
    weights still follow the hard labels ``y``. ``mixup`` blends pairs after
    augmentation.
    """
    t = targets(y, head) if soft_targets is None else np.asarray(soft_targets, dtype=np.float32)
    w = sample_weights(y, weights)
    classes = _class_indices(y)
    if using_tensorflow():
        return _tf_dataset(x, t, w, batch_size, augmenter, seed, shuffle, classes, mixup)
    return array_batches(x, t, w, batch_size, augmenter, seed, shuffle, classes, mixup)


def evaluation_data(x: np.ndarray, y: np.ndarray, head: Head, batch_size: int) -> Any:
    """Ordered, unaugmented, unweighted batches (validation during fit)."""
    t = targets(y, head)
    if using_tensorflow():
        return _tf_dataset(x, t, None, batch_size, None, 0, False, _class_indices(y))
    return array_batches(x, t, None, batch_size, None, 0, False, _class_indices(y))


def _class_indices(y: np.ndarray) -> np.ndarray:
    """Hard class indices, which class-conditional augmentation reads (targets may be soft)."""
    return np.asarray(y, dtype=np.int32).reshape(-1)


def _tf_dataset(
    x: np.ndarray,
    t: np.ndarray,
    w: np.ndarray | None,
    batch_size: int,
    augmenter: Augmenter | None,
    seed: int,
    shuffle: bool,
    classes: np.ndarray,
    mixup: Mixup | None = None,
) -> Any:
    import tensorflow as tf

    # Shuffle indices, not images: a shuffle buffer of images would hold a second copy of the set.
    images = tf.constant(x)
    labels = tf.constant(t)
    weights = tf.constant(w) if w is not None else None
    class_index = tf.constant(classes)
    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    blend = mixup.make() if mixup is not None else None

    def load(idx: Any) -> Any:
        batch = tf.cast(tf.gather(images, idx), tf.float32)
        if augmenter is not None:
            batch = augmenter(batch, tf.gather(class_index, idx))
        target = tf.gather(labels, idx)
        weight = tf.gather(weights, idx) if weights is not None else None
        if blend is not None:
            batch, target, weight = blend(batch, target, weight)
        return (batch, target) if weight is None else (batch, target, weight)

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def array_batches(
    x: np.ndarray,
    t: np.ndarray,
    w: np.ndarray | None,
    batch_size: int,
    augmenter: Augmenter | None,
    seed: int,
    shuffle: bool,
    classes: np.ndarray,
    mixup: Mixup | None = None,
) -> Any:
    """A ``keras.utils.PyDataset`` over in-memory arrays, for the PyTorch and JAX backends."""
    import keras

    class ArrayBatches(keras.utils.PyDataset):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = self._new_order()
            self.blend = mixup.make() if mixup is not None else None

        def _new_order(self) -> np.ndarray:
            return self.rng.permutation(len(x)) if shuffle else np.arange(len(x))

        def __len__(self) -> int:
            return math.ceil(len(x) / batch_size)

        def __getitem__(self, index: int) -> Sequence[np.ndarray]:
            idx = self.order[index * batch_size : (index + 1) * batch_size]
            batch = x[idx].astype(np.float32)
            if augmenter is not None:
                batch = keras.ops.convert_to_numpy(augmenter(batch, classes[idx]))
            target, weight = t[idx], (w[idx] if w is not None else None)
            if self.blend is not None:
                mixed = self.blend(batch, target, weight)
                batch, target = (keras.ops.convert_to_numpy(a) for a in mixed[:2])
                weight = None if mixed[2] is None else keras.ops.convert_to_numpy(mixed[2])
            return (batch, target) if weight is None else (batch, target, weight)

        def on_epoch_end(self) -> None:
            self.order = self._new_order()

    return ArrayBatches()
