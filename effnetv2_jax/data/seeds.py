"""Where every random number of the input pipeline comes from: stateless keys, no global state.

A key is a `[2]` int64 tensor for TF's stateless ops. Each use folds a purpose tag and then its
coordinates into the user's seed, so that different uses never share a stream:

| use                                  | key                                        |
|--------------------------------------|--------------------------------------------|
| epoch order (permutation of a shard) | seed, ORDER, epoch                         |
| one example's crop/flip/augmentation | seed, EXAMPLE, epoch, example key          |
| one batch's mixup / CutMix           | seed, MIX, global step, process index      |
| streamed files' order in an epoch    | seed, FILES, epoch                         |
| streamed shuffle window              | seed, WINDOW, epoch, window index          |

The "example key" is unique across processes (see `sources.py`). Because nothing depends on how
far an iterator has run, restarting at step s reproduces the uninterrupted stream bit for bit.
Stateless ops are reproducible on the same TF version and device type (here: CPU); a TF
upgrade may change the stream.
"""

from __future__ import annotations

from effnetv2_jax._extras import require

tf = require("tensorflow", "data")

ORDER, EXAMPLE, MIX, FILES, WINDOW = 1, 2, 3, 4, 5


def key(seed: int, purpose: int, *coordinates) -> tf.Tensor:
    """The `[2]` int64 key for `purpose` at `coordinates` (ints or int64 scalar tensors)."""
    result = tf.constant([seed & 0x7FFFFFFFFFFFFFFF, purpose], tf.int64)
    for coordinate in coordinates:
        result = tf.random.experimental.stateless_fold_in(result, tf.cast(coordinate, tf.int64))
    return result
