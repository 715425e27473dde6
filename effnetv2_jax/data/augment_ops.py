"""The 16 image ops of RandAugment / AutoAugment, in TF ops that run inside `tf.data`.

Every op maps a uint8 image `[height, width, 3]` to a uint8 image of the same shape. The
semantics are the official ones (google/automl `efficientnetv2/autoaugment.py`, which follows
PIL's `ImageOps` / `ImageEnhance`):

* blends (`color`, `contrast`, `brightness`, `sharpness`) compute `a + factor * (b - a)` in
  float32, clip to [0, 255] and truncate, exactly as PIL's `Image.blend` does;
* geometric ops (`rotate`, `shear_*`, `translate_*`) use nearest-neighbour sampling and fill the
  uncovered pixels with `replace` (128: mid grey). The official code gets the same pixels from
  tfa's transform plus its "wrap/unwrap" alpha channel; here the fill value goes straight into
  `ImageProjectiveTransformV3` (core TF, no tensorflow_addons), and translations, whose
  nearest neighbour is a whole-pixel shift, are a pad and a slice;
* random choices (the cutout centre) come from a stateless `seed` (`[2]` int64), never from
  global state.

Speed (the pipeline runs these per image on the CPU): TF's element-wise ops are fast on tensors
of one shape or with a scalar, several times slower when they broadcast or select
(`tf.where`). So masks are built full-size by padding a block of ones, per-channel values are
`broadcast_to` the image first, and solarize uses XOR (`255 - x == x ^ 255`).

Known differences from the official code, all deliberate:

* `color`/`contrast` take grey levels with PIL's integer luma rounding
  (`(19595 R + 38470 G + 7471 B + 2**15) >> 16`, as `Image.convert("L")`); the official code
  uses `tf.image.rgb_to_grayscale`, which can differ by one grey level.
* `contrast` blends towards the image's mean grey, as PIL does. The official code blends towards
  `min(num_pixels / 256, 255)` (a histogram-sum bug of official `autoaugment.py`); pass
  `official_bug=True` to reproduce it.
* `posterize` with 0 bits gives black (PIL); the official code shifts a uint8 by 8 bits, which
  TF leaves undefined.
* `sharpness` filters in exact integer arithmetic (see its docstring).
"""

from __future__ import annotations

import math

from effnetv2_jax._extras import require

tf = require("tensorflow", "data")

REPLACE = 128  # grey fill of pixels uncovered by geometric ops and RandAugment's cutout


def blend(image1, image2: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """`image1 + factor * (image2 - image1)`, clipped and truncated to uint8 (PIL `Image.blend`).

    factor 0 gives image1, 1 gives image2; above 1 extrapolates away from image1. image1 may be
    anything that broadcasts against image2 (a grey image `[h, w, 1]`, a scalar).
    """
    b = tf.cast(image2, tf.float32)
    a = tf.cast(image1, tf.float32)
    if a.shape.rank:  # same-shape ops: TF's general broadcasting is several times slower
        a = tf.broadcast_to(a, tf.shape(b))
    return tf.cast(tf.clip_by_value(a + factor * (b - a), 0.0, 255.0), tf.uint8)


def _luma(image: tf.Tensor) -> tf.Tensor:
    """Grey level float32 `[height, width, 1]`, PIL's `(19595 R + 38470 G + 7471 B + 2**15) >> 16`.

    Computed in float32, which is exact here: every sum stays below 2**24.
    """
    x = tf.cast(image, tf.float32)
    weighted = 19595.0 * x[..., 0] + 38470.0 * x[..., 1] + 7471.0 * x[..., 2] + 32768.0
    return tf.floor(weighted / 65536.0)[..., None]


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Stretches each channel so its darkest pixel becomes 0 and its brightest 255."""
    x = tf.cast(image, tf.float32)
    lo = tf.reduce_min(x, axis=[0, 1])
    hi = tf.reduce_max(x, axis=[0, 1])
    flat = hi <= lo  # flat channels stay as they are
    scale = tf.where(flat, 1.0, 255.0 / tf.maximum(hi - lo, 1.0))
    offset = tf.where(flat, 0.0, -lo * scale)
    shape = tf.shape(x)  # same-shape ops: TF's general broadcasting is several times slower
    stretched = x * tf.broadcast_to(scale, shape) + tf.broadcast_to(offset, shape)
    return tf.cast(tf.clip_by_value(stretched, 0.0, 255.0), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Per-channel histogram equalisation, PIL's algorithm (`ImageOps.equalize`)."""
    # One histogram over (channel, level) pairs, and one lookup through a [3 * 256] table.
    index = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
    histogram = tf.reshape(tf.math.bincount(tf.reshape(index, [-1]), minlength=768,
                                            maxlength=768), [3, 256])
    # PIL leaves out the count of the brightest level present when computing the step.
    last_level = 255 - tf.argmax(tf.reverse(tf.cast(histogram > 0, tf.int32), [1]), axis=1,
                                 output_type=tf.int32)
    last_count = tf.gather(histogram, last_level, batch_dims=1)
    step = (tf.reduce_sum(histogram, axis=1) - last_count) // 255  # [3]
    safe_step = tf.maximum(step, 1)[:, None]
    lut = (tf.cumsum(histogram, axis=1) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], tf.int32), lut[:, :-1]], axis=1), 0, 255)
    identity = tf.broadcast_to(tf.range(256), [3, 256])
    lut = tf.where(step[:, None] > 0, lut, identity)  # one level only: unchanged
    return tf.gather(tf.reshape(tf.cast(lut, tf.uint8), [-1]), index)


def invert(image: tf.Tensor) -> tf.Tensor:
    """`255 - x`."""
    return 255 - image


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
    """Keeps the `bits` most significant bits of each pixel (0 bits: black, 8: unchanged)."""
    bits = min(max(int(bits), 0), 8)
    mask = (0xFF << (8 - bits)) & 0xFF
    return tf.bitwise.bitwise_and(image, tf.constant(mask, tf.uint8))


def solarize(image: tf.Tensor, threshold: int = 128) -> tf.Tensor:
    """Inverts the pixels at or above `threshold` (no-op for threshold >= 256)."""
    threshold = int(threshold)
    if threshold >= 256:
        return image
    if threshold <= 0:
        return invert(image)
    # 255 - x == x XOR 255 for uint8: cheaper than a select.
    flip = tf.cast(image >= tf.constant(threshold, tf.uint8), tf.uint8) * 255
    return tf.bitwise.bitwise_xor(image, flip)


def solarize_add(image: tf.Tensor, addition: int = 0, threshold: int = 128) -> tf.Tensor:
    """Adds `addition` to the pixels below `threshold`, clipped to [0, 255]."""
    addition, threshold = int(addition), int(threshold)
    if threshold <= 0 or addition == 0:
        return image
    below = (tf.ones_like(image) if threshold >= 256 else
             tf.cast(image < tf.constant(threshold, tf.uint8), tf.uint8))
    if addition > 0:  # saturate at 255
        return image + below * tf.minimum(255 - image, tf.constant(min(addition, 255), tf.uint8))
    return image - below * tf.minimum(image, tf.constant(min(-addition, 255), tf.uint8))


def color(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Saturation: blends from the grey image (factor 0) through the image (1) and beyond."""
    return blend(_luma(image), image, factor)


def contrast(image: tf.Tensor, factor: float, official_bug: bool = False) -> tf.Tensor:
    """Blends from a flat image of the mean grey level (factor 0) through the image (1)."""
    luma = _luma(image)
    if official_bug:  # sum(histogram) / 256 = num_pixels / 256, not the mean (section 4.5)
        mean = tf.floor(tf.minimum(tf.cast(tf.size(luma), tf.float32) / 256.0, 255.0))
    else:  # PIL: int(mean + 0.5)
        mean = tf.cast(tf.floor(tf.reduce_mean(tf.cast(luma, tf.float64)) + 0.5), tf.float32)
    return blend(mean, image, factor)


def brightness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Blends from black (factor 0) through the image (1) and beyond."""
    return blend(0.0, image, factor)


def sharpness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Blends from PIL's SMOOTH-filtered image (factor 0) through the image (1) and beyond.

    The 3x3 kernel `[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13` is applied to the interior; the
    one-pixel border keeps its original values (as PIL and the official code do). The filter
    is computed in integers and truncated, as the official float convolution does, minus its
    rounding error (which can truncate a multiple of 13 one level low).
    """
    def sharpen():
        x = tf.cast(image, tf.int32)
        rows = x[:-2] + x[1:-1] + x[2:]
        box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
        smooth = (box + 4 * x[1:-1, 1:-1]) // 13
        interior = blend(smooth, image[1:-1, 1:-1], factor)
        middle = tf.concat([image[1:-1, :1], interior, image[1:-1, -1:]], axis=1)
        return tf.concat([image[:1], middle, image[-1:]], axis=0)

    shape = tf.shape(image)
    return tf.cond(tf.minimum(shape[0], shape[1]) >= 3, sharpen, lambda: image)


def _transform(image: tf.Tensor, transform: list, replace: int) -> tf.Tensor:
    """Samples `image` at `(a0 x + a1 y + a2, b0 x + b1 y + b2)` for each output pixel (x, y).

    `transform` is the 8-vector of `tf.raw_ops.ImageProjectiveTransformV3` (projective terms 0);
    nearest neighbour (coordinates rounded), pixels that map outside get `replace`.
    """
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(tf.stack(transform)[None], tf.float32),
        output_shape=shape[:2], fill_value=tf.constant(replace, tf.float32),
        interpolation="NEAREST", fill_mode="CONSTANT")
    return out[0]


def rotate(image: tf.Tensor, degrees: float | tf.Tensor, replace: int = REPLACE) -> tf.Tensor:
    """Rotates about the image centre by `degrees` (tfa.image.rotate's convention)."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(radians), tf.sin(radians)
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    return _transform(image, [cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0], replace)


def shear_x(image: tf.Tensor, level: float | tf.Tensor, replace: int = REPLACE) -> tf.Tensor:
    """Output pixel (x, y) takes input pixel (x + level * y, y)."""
    return _transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], replace)


def shear_y(image: tf.Tensor, level: float | tf.Tensor, replace: int = REPLACE) -> tf.Tensor:
    """Output pixel (x, y) takes input pixel (x, level * x + y)."""
    return _transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0], replace)


def _shift(image: tf.Tensor, pixels: float, axis: int, replace: int) -> tf.Tensor:
    """Output pixel i takes input pixel i + pixels along `axis` (nearest), grey elsewhere.

    A pad and a slice: the projective transform's result for any shift whose fractional part
    is not exactly 0.5 (those go through the transform).
    """
    if abs(pixels) % 1 == 0.5:
        offsets = [pixels, 0.0] if axis == 1 else [0.0, pixels]
        return _transform(image, [1.0, 0.0, offsets[0], 0.0, 1.0, offsets[1], 0.0, 0.0], replace)
    shift = int(math.copysign(math.floor(abs(pixels) + 0.5), pixels))
    pad = abs(shift)
    paddings = [[0, 0], [0, 0], [0, 0]]
    paddings[axis] = [pad, pad]
    padded = tf.pad(image, paddings, constant_values=tf.constant(replace, image.dtype))
    begin = [0, 0, 0]
    begin[axis] = pad + shift
    return tf.slice(padded, begin, tf.shape(image))


def translate_x(image: tf.Tensor, pixels: float, replace: int = REPLACE) -> tf.Tensor:
    """Output pixel (x, y) takes input pixel (x + pixels, y): content moves left by `pixels`."""
    return _shift(image, float(pixels), 1, replace)


def translate_y(image: tf.Tensor, pixels: float, replace: int = REPLACE) -> tf.Tensor:
    """Output pixel (x, y) takes input pixel (x, y + pixels): content moves up by `pixels`."""
    return _shift(image, float(pixels), 0, replace)


def box_mask(height: tf.Tensor, width: tf.Tensor, center_y: tf.Tensor, center_x: tf.Tensor,
             half_height: tf.Tensor, half_width: tf.Tensor, channels: int = 3,
             dtype: tf.DType = tf.uint8) -> tf.Tensor:
    """`[height, width, channels]`, 1 on rows `[cy - hh, cy + hh)` x columns `[cx - hw, cx + hw)`.

    The box is clipped at the image border (the official cutout's padding arithmetic). Built by
    padding a block of ones, so applying it needs no broadcasting.
    """
    top = tf.clip_by_value(center_y - half_height, 0, height)
    bottom = tf.clip_by_value(center_y + half_height, top, height)
    left = tf.clip_by_value(center_x - half_width, 0, width)
    right = tf.clip_by_value(center_x + half_width, left, width)
    ones = tf.ones([bottom - top, right - left, channels], dtype)
    return tf.pad(ones, [[top, height - bottom], [left, width - right], [0, 0]])


def cutout(image: tf.Tensor, pad_size: int, seed: tf.Tensor, replace: int = REPLACE) -> tf.Tensor:
    """Fills a square of side up to `2 * pad_size`, centred on a uniform pixel, with `replace`."""
    shape = tf.shape(image)
    center = tf.random.stateless_uniform([2], seed, minval=0, maxval=tf.int32.max,
                                         dtype=tf.int32) % shape[:2]
    inside = box_mask(shape[0], shape[1], center[0], center[1], pad_size, pad_size)
    return image * (1 - inside) + tf.constant(replace, tf.uint8) * inside  # no select: faster
