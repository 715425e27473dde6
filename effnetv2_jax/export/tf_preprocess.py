"""The eval preprocessing of a batch, in TF ops that TFLite runs natively.

`eval_batch` is `effnetv2_jax.data.preprocess.eval_image` (what `predict` and training's
evaluation use) for a batch of same-sized uint8 images: the same centre crop window (or squash),
resize and normalisation, so a served model sees what the checkpoint was evaluated on.

Two changes, both so that the TFLite converter maps every op to a builtin kernel:

* images are cast to float32 before resizing (TF's resize kernels cast internally; TFLite's
  uint8 RESIZE_BILINEAR would instead return quantised uint8), so bilinear is unchanged;
* bicubic (V1, Lite and the V2 B-series weights) is `ResizeBicubic` with
  `half_pixel_centers=False`, which TFLite has no builtin for (the converter stops with
  "'tf.ResizeBicubic' op is neither a custom op nor a flex op"). Here it is rebuilt from GATHERs
  and multiply-adds with TF's own weights: Keys' cubic with a = -0.75, the sample offset rounded
  to 1/1024 as TF's coefficient table does, edge pixels repeated, rows first, then columns (the
  kernel's order). It matches `ResizeBicubic` to float32 rounding (tests/test_export.py).
"""

from __future__ import annotations

from effnetv2_jax._extras import require
from effnetv2_jax.preprocessing import Preprocessing
from effnetv2_jax.data.preprocess import center_crop_window, normalize, squashes

tf = require("tensorflow", "data")

# TF's bicubic kernel (resize_bicubic_op.cc) tabulates the cubic at 1024 offsets per pixel, and
# uses a = -0.75 without half-pixel centres (-0.5, Keys' value, with them).
_TABLE_SIZE = 1024.0
_LEGACY_CUBIC_A = -0.75


def _cubic_near(t: tf.Tensor) -> tf.Tensor:
    """Weight of a sample at distance t in [0, 1]."""
    a = _LEGACY_CUBIC_A
    return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0


def _cubic_far(t: tf.Tensor) -> tf.Tensor:
    """Weight of a sample at distance 1 + t, t in [0, 1]."""
    a = _LEGACY_CUBIC_A
    x = t + 1.0
    return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a


def _bicubic_taps(in_size: tf.Tensor, out_size: int) -> tuple[list, list]:
    """For each of `out_size` outputs along one axis: 4 source indices [out_size] int32 and
    their 4 weights [out_size] float32 (TF's legacy `ResizeBicubic`, align_corners=False)."""
    scale = tf.cast(in_size, tf.float32) / float(out_size)
    position = tf.range(out_size, dtype=tf.float32) * scale
    base = tf.floor(position)
    # lrintf(delta * 1024): round half to even, as tf.round.
    t = tf.round((position - base) * _TABLE_SIZE) / _TABLE_SIZE
    weights = [_cubic_far(t), _cubic_near(t), _cubic_near(1.0 - t), _cubic_far(1.0 - t)]
    base = tf.cast(base, tf.int32)
    indices = [tf.clip_by_value(base + k, 0, in_size - 1) for k in (-1, 0, 1, 2)]
    return indices, weights


def _interpolate(images: tf.Tensor, axis: int, indices: list, weights: list) -> tf.Tensor:
    """sum_k weights[k] * images gathered at indices[k] along `axis` (1: rows, 2: columns)."""
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    out = None
    for index, weight in zip(indices, weights):
        term = tf.gather(images, index, axis=axis) * tf.reshape(weight, shape)
        out = term if out is None else out + term
    return out


def resize_bicubic(images: tf.Tensor, size: int) -> tf.Tensor:
    """float32 [batch, H, W, C] -> [batch, size, size, C], as
    `tf.raw_ops.ResizeBicubic(align_corners=False, half_pixel_centers=False)`."""
    shape = tf.shape(images)
    rows = _interpolate(images, 1, *_bicubic_taps(shape[1], size))
    return _interpolate(rows, 2, *_bicubic_taps(shape[2], size))


def resize_batch(images: tf.Tensor, size: int, interpolation: str) -> tf.Tensor:
    """uint8 or float [batch, H, W, 3] -> float32 [batch, size, size, 3], the data pipeline's
    resize (`effnetv2_jax.data.preprocess.resize`) in TFLite-native ops."""
    images = tf.cast(images, tf.float32)
    if interpolation == "bilinear":
        return tf.image.resize(images, [size, size], method="bilinear", antialias=False)
    if interpolation == "bicubic":
        return resize_bicubic(images, size)
    raise ValueError(f"unknown interpolation {interpolation!r} (valid: bilinear, bicubic)")


def eval_batch(images: tf.Tensor, size: int, preprocess: Preprocessing) -> tf.Tensor:
    """uint8 [batch, H, W, 3] (any H, W) -> normalised float32 [batch, size, size, 3].

    The centre square of side `int(size / (size + crop_padding) * min(H, W))` (or the whole image
    when the checkpoint squashes at this size), resized and normalised: `eval_image` per image.
    """
    if not squashes(size, preprocess):
        shape = tf.shape(images)
        offset_y, offset_x, side = center_crop_window(shape[1], shape[2], size, preprocess)
        images = tf.slice(images, [0, offset_y, offset_x, 0], [-1, side, side, 3])
    resized = resize_batch(images, size, preprocess.interpolation)
    return tf.ensure_shape(normalize(resized, preprocess), [None, size, size, 3])
