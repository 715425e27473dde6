"""Synthetic images of any size and class count, generated from their index (no files).

Example `i` has label `i % num_classes` and an image made of its class colour plus per-pixel
noise, both stateless functions of the index: the same example always looks the same, the data
take no memory, and a model can learn them (a smoke test can check the loss falls). Eval
examples use indices after the training ones, so the two sets differ.
"""

from __future__ import annotations

from effnetv2_jax._extras import require
from effnetv2_jax.data.shard import Shard, contiguous_bounds

tf = require("tensorflow", "data")

_COLOUR, _NOISE = 11, 12  # seed tags
NOISE_AMPLITUDE = 48.0  # pixels


def synthetic_image(key: tf.Tensor, num_classes: int, size: int) -> tf.Tensor:
    """uint8 `[size, size, 3]`: the colour of class `key % num_classes` plus noise."""
    key = tf.cast(key, tf.int64)
    label = key % num_classes
    colour = tf.random.stateless_uniform([3], tf.stack([label, _COLOUR]), 32.0, 224.0)
    noise = tf.random.stateless_uniform([size, size, 3], tf.stack([key, _NOISE]),
                                        -NOISE_AMPLITUDE, NOISE_AMPLITUDE)
    return tf.cast(tf.clip_by_value(colour + noise, 0.0, 255.0), tf.uint8)


class SyntheticShard(Shard):
    """A contiguous range of synthetic example indices `[first_key, first_key + total)`."""

    def __init__(self, first_key: int, total: int, num_classes: int, image_size: int,
                 process_index: int, process_count: int):
        start, stop = contiguous_bounds(total, process_index, process_count)
        self.num_classes = num_classes
        self.num_examples = stop - start
        self.max_num_examples = -(-total // process_count)
        self._first_key = first_key + start
        self._num_classes, self._image_size = num_classes, image_size

    def fetch(self, index):
        key = self._first_key + tf.cast(index, tf.int64)
        return key, tf.cast(key % self._num_classes, tf.int32), key

    def decode(self, raw):
        return synthetic_image(raw, self._num_classes, self._image_size)
