"""Labels: one class per image (`ClassLabel`) or several (`Sequence(ClassLabel)`, ImageNet-21k).

Shards return a single-label example's label as an int32 scalar and a multi-label example's as
a float32 multi-hot vector `[num_classes]` (1.0 for each of its classes), so both batch with a
fixed shape. `targets` turns either into the float32 `[num_classes]` training target.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from effnetv2_jax._extras import require

tf = require("tensorflow", "data")
tfds = require("tensorflow_datasets", "data")


@dataclasses.dataclass(frozen=True)
class LabelFeature:
    """What a TFDS label feature holds.

    Attributes:
      num_classes: classes of the dataset.
      names: one name per class id.
      multi_label: True for `Sequence(ClassLabel)`: each example lists its classes.
    """

    num_classes: int
    names: tuple[str, ...]
    multi_label: bool


def describe_feature(feature) -> LabelFeature | None:
    """The `LabelFeature` of a TFDS feature, or None if it is not a (sequence of) ClassLabel."""
    multi_label = isinstance(feature, tfds.features.Sequence)
    class_label = feature.feature if multi_label else feature
    if not isinstance(class_label, tfds.features.ClassLabel):
        return None
    return LabelFeature(class_label.num_classes, tuple(class_label.names), multi_label)


def multi_hot(class_ids: tf.Tensor, num_classes: int) -> tf.Tensor:
    """int [n] class ids (repeats count once; n may be 0) -> float32 [num_classes] of 0/1."""
    class_ids = tf.cast(tf.reshape(class_ids, [-1]), tf.int32)
    hot = tf.scatter_nd(class_ids[:, None], tf.ones_like(class_ids, tf.float32), [num_classes])
    return tf.minimum(hot, 1.0)


def targets(label: tf.Tensor, num_classes: int, normalize_multi_hot: bool) -> tf.Tensor:
    """A shard's label -> float32 [num_classes] training target (before mixing/smoothing).

    An int class id becomes one-hot. A multi-hot vector is divided by its label count when
    `normalize_multi_hot` (paper section 5.2, official `multiclass=True`): a distribution for
    softmax cross-entropy. An image without labels keeps an all-zero target (no loss).
    """
    if label.shape.rank == 0:
        return tf.one_hot(label, num_classes)
    label = tf.cast(label, tf.float32)
    if not normalize_multi_hot:
        return label
    return label / tf.maximum(tf.reduce_sum(label), 1.0)


class RaggedLabels:
    """Per-example class-id lists held as one flat array, gathered by index in TF ops."""

    def __init__(self, class_id_lists, num_classes: int):
        lengths = np.array([len(ids) for ids in class_id_lists], np.int64)
        flat = (np.concatenate([np.asarray(ids, np.int32).reshape(-1) for ids in class_id_lists])
                if len(class_id_lists) else np.zeros([0], np.int32))
        if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
            raise ValueError(f"class ids must be in [0, {num_classes}); got {flat.min()} .. "
                             f"{flat.max()}")
        self._labels = tf.RaggedTensor.from_row_lengths(tf.constant(flat), tf.constant(lengths))
        self._num_classes = num_classes

    def __len__(self) -> int:
        return int(self._labels.nrows())

    def lookup(self, index: tf.Tensor) -> tf.Tensor:
        """float32 [num_classes] multi-hot of example `index`."""
        return multi_hot(self._labels[index], self._num_classes)
