"""A `Shard`: this process's part of one split, readable by position in TF ops.

Every source (TFDS, image folder, synthetic) turns into a `Shard`. The pipeline asks it for
examples by local index `0 .. num_examples - 1` (random-access shards) or for a stream of
epochs (streaming shards, `random_access = False`), and decodes what it returns with
`shard.decode`. Each example also carries a `key`, its index in the whole split, which is unique
across processes and keys the example's augmentation (see `seeds.py`).

How processes split the data (each reads only its own part):

* TFDS: contiguous `tfds.even_splits` parts (TFDS shuffled the records when it prepared the
  dataset, so each part is a random sample), so a process opens only its own files;
* folders: every `process_count`-th file of the sorted list, so each part has every class;
* synthetic: contiguous index ranges.

Parts differ by at most a few examples; each process runs its own epochs over its part. The
stream therefore depends on `process_count`: resuming with a different number of processes is
a valid stream but not the one an uninterrupted run would have seen.
"""

from __future__ import annotations

import abc

import numpy as np

from effnetv2_jax._extras import require
from effnetv2_jax.data.labels import RaggedLabels
from effnetv2_jax.data.preprocess import decode as decode_image

tf = require("tensorflow", "data")


def hold(array: np.ndarray) -> tf.Variable:
    """Keeps a large array in a TF variable that `tf.data` functions read by index.

    A captured constant would be copied into every serialised dataset graph (and fail past
    2 GB); a variable is captured by reference.
    """
    return tf.Variable(tf.constant(array), trainable=False)


def contiguous_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """`[start, stop)` of part `process_index` when `num_examples` split into contiguous parts."""
    return (process_index * num_examples // process_count,
            (process_index + 1) * num_examples // process_count)


class Shard(abc.ABC):
    """This process's part of one split.

    Attributes:
      num_classes: classes of the dataset (labels are 0 .. num_classes - 1).
      multi_label: labels are float32 multi-hot vectors [num_classes] (`labels.py`), not int32.
      num_examples: examples in this part.
      max_num_examples: the largest part over all processes (sets the eval batch count).
      random_access: True if `read` works; False for streams (`stream` instead).
    """

    num_classes: int
    num_examples: int
    max_num_examples: int
    random_access: bool = True
    multi_label: bool = False

    def read(self, elements: tf.data.Dataset) -> tf.data.Dataset:
        """Adds "raw", "label" (int32, or multi-hot) and "key" (int64) to dicts with "index".

        Order is preserved; the default reads one example per call with `fetch`.
        """
        def add(element):
            raw, label, key = self.fetch(element["index"])
            return {**element, "raw": raw, "label": label, "key": key}
        return elements.map(add, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def fetch(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """`(raw, label, key)` of the example at local `index` (random-access shards)."""
        raise NotImplementedError(f"{type(self).__name__} has no random access")

    def stream(self, seed: int, start: int) -> tf.data.Dataset:
        """Streaming shards: dicts with "raw", "label", "key", "epoch" from position `start`."""
        raise NotImplementedError(f"{type(self).__name__} is read by index")

    def in_order(self) -> tf.data.Dataset:
        """Every example once, in shard order: dicts with "raw", "label", "key" (for eval)."""
        indices = tf.data.Dataset.range(self.num_examples).map(lambda i: {"index": i})
        return self.read(indices)

    @abc.abstractmethod
    def decode(self, raw: tf.Tensor) -> tf.Tensor:
        """What `read`/`stream` returned as "raw" -> uint8 image `[height, width, 3]`."""


class MemoryShard(Shard):
    """Encoded images and labels held in host memory (small and medium datasets).

    `labels` is an int array [n] of class ids, or `RaggedLabels` for multi-label data.
    """

    def __init__(self, encoded: np.ndarray, labels: np.ndarray | RaggedLabels, keys: np.ndarray,
                 num_classes: int, max_num_examples: int):
        self.num_classes = num_classes
        self.num_examples = len(labels)
        self.max_num_examples = max_num_examples
        self.multi_label = isinstance(labels, RaggedLabels)
        self.nbytes = sum(len(e) for e in encoded)
        self._encoded = hold(encoded) if len(encoded) else None
        self._labels = labels if self.multi_label else tf.constant(np.asarray(labels, np.int32))
        self._keys = tf.constant(np.asarray(keys, np.int64))

    def fetch(self, index):
        label = (self._labels.lookup(index) if self.multi_label
                 else tf.gather(self._labels, index))
        return tf.gather(self._encoded, index), label, tf.gather(self._keys, index)

    def decode(self, raw):
        return decode_image(raw)
