"""Per-image preprocessing for training and evaluation, as the official code does it (`preprocessing.py`,
`preprocess_legacy.py`).

Train (`train_image`), for a decoded uint8 image `[H, W, 3]` of any size:

1. crop, by `Preprocessing.crop`:
   * "v2": `sample_distorted_bounding_box` with area 5-100%, aspect 3/4-4/3, 100 attempts;
   * "legacy" (V1 / B-series): area 8-100%, `min_object_covered` 0.1, 10 attempts; a failed
     search (the whole image) falls back to the eval centre crop;
   * "resize" (fine-tune recipe): no crop;
2. resize to `size x size`: bilinear with half-pixel centres (V2) or the legacy
   `resize_bicubic` without them (V1); float output;
3. random horizontal flip;
4. "randaug" / "autoaug": clip to [0, 255], truncate to uint8, augment, back to float;
5. normalise `(x - mean) / std`;
6. "ft": cutout of a square of side up to size/2, filled with U[0, 1) noise (normalised units).

Eval (`eval_image`): a centre square of side `int(size / (size + crop_padding) * min(H, W))`,
or the whole image when `size >= squash_min_size` (V2 at 320 px and above) or with the
fine-tune recipe; resize; normalise.

The fine-tune recipe normalises with the weights' mean/std (official: always 127.5/127.5; for V2
weights, 128/128, a 0.4% scale difference) so that evaluation and training agree.

All randomness comes from a stateless `[2]` int64 seed per example (see `seeds.py`).
"""

from __future__ import annotations

from effnetv2_jax._extras import require
from effnetv2_jax.data import augment_ops, randaugment
from effnetv2_jax.preprocessing import Preprocessing

tf = require("tensorflow", "data")


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG / PNG / GIF / BMP / WebP bytes -> uint8 `[H, W, 3]` (grey, RGBA, CMYK -> RGB)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image: tf.Tensor, size: int, interpolation: str) -> tf.Tensor:
    """Resizes `[H, W, 3]` to float32 `[size, size, 3]` with the official convention."""
    if interpolation == "bilinear":
        return tf.image.resize(image, [size, size], method="bilinear", antialias=False)
    # tf.compat.v1.image.resize_bicubic(align_corners=False), the V1 pipeline's resize.
    resized = tf.raw_ops.ResizeBicubic(images=tf.cast(image, tf.float32)[None], size=[size, size],
                                       align_corners=False, half_pixel_centers=False)
    return resized[0]


def normalize(image: tf.Tensor, preprocess: Preprocessing) -> tf.Tensor:
    """`(x - mean) / std` per channel, float32."""
    image = tf.cast(image, tf.float32)
    if len(set(preprocess.mean)) == 1 and len(set(preprocess.std)) == 1:  # V2, Lite
        return (image - preprocess.mean[0]) / preprocess.std[0]
    # Same-shape ops: TF's general broadcasting over channels is several times slower.
    shape = tf.shape(image)
    mean = tf.broadcast_to(tf.constant(preprocess.mean, tf.float32), shape)
    std = tf.broadcast_to(tf.constant(preprocess.std, tf.float32), shape)
    return (image - mean) / std


def center_crop_window(height: tf.Tensor, width: tf.Tensor, size: int,
                       preprocess: Preprocessing) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(offset_y, offset_x, side)` of the eval centre crop, in pixels.

    side = `int(size / (size + crop_padding) * min(H, W))` computed in float32 as the official
    code does, at least 1; offsets `(H - side) // 2` (V2) or `(H - side + 1) // 2` (legacy
    bicubic).
    """
    ratio = tf.constant(size / (size + preprocess.crop_padding), tf.float32)
    side = tf.cast(ratio * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    side = tf.maximum(side, 1)  # tiny images (1x1, 10000x1): keep a pixel, never an empty crop
    round_up = 1 if preprocess.interpolation == "bicubic" else 0
    return (height - side + round_up) // 2, (width - side + round_up) // 2, side


def _center_crop(image: tf.Tensor, size: int, preprocess: Preprocessing) -> tf.Tensor:
    shape = tf.shape(image)
    offset_y, offset_x, side = center_crop_window(shape[0], shape[1], size, preprocess)
    return tf.slice(image, [offset_y, offset_x, 0], [side, side, 3])


def squashes(size: int, preprocess: Preprocessing) -> bool:
    """True when eval at `size` resizes the whole image instead of centre-cropping."""
    if preprocess.crop == "resize":
        return True
    return preprocess.squash_min_size is not None and size >= preprocess.squash_min_size


def eval_image(image: tf.Tensor, size: int, preprocess: Preprocessing) -> tf.Tensor:
    """uint8 `[H, W, 3]` -> normalised float32 `[size, size, 3]` (centre crop or squash)."""
    if not squashes(size, preprocess):
        image = _center_crop(image, size, preprocess)
    return normalize(resize(image, size, preprocess.interpolation), preprocess)


def random_crop(image: tf.Tensor, size: int, preprocess: Preprocessing,
                 seed: tf.Tensor, min_area: float | None = None) -> tf.Tensor:
    """The training crop (step 1 of the module docstring), before resizing.

    `min_area` replaces the crop's smallest area fraction (official: 0.05 for "v2", 0.08 for
    "legacy"); small images such as 8x8 digits need a gentler crop.
    """
    shape = tf.shape(image)
    if preprocess.crop == "resize":
        return image
    if preprocess.crop == "v2":
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, tf.zeros([0, 0, 4]), seed=seed, min_object_covered=0.0,
            aspect_ratio_range=(0.75, 1.33), area_range=(min_area or 0.05, 1.0), max_attempts=100,
            use_image_if_no_bounding_boxes=True)
        return tf.slice(image, begin, crop_size)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(min_area or 0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    # The search gave up and returned the whole image (crop_size's channel entry is -1).
    failed = tf.reduce_all(tf.equal(crop_size[:2], shape[:2]))
    return tf.cond(failed, lambda: _center_crop(image, size, preprocess),
                   lambda: tf.slice(image, begin, crop_size))


def cutout_noise(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The fine-tune recipe's cutout on a normalised `[size, size, 3]` image.

    A square of side up to size/2 (pad size // 4), centred on a uniform pixel and clipped at the
    border, is filled with per-pixel U[0, 1) noise.
    """
    center_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    pad = shape[0] // 4
    center = tf.random.stateless_uniform([2], center_seed, 0, tf.int32.max,
                                         dtype=tf.int32) % shape[:2]
    inside = augment_ops.box_mask(shape[0], shape[1], center[0], center[1], pad, pad,
                                  dtype=image.dtype)
    noise = tf.random.stateless_uniform(shape, noise_seed, dtype=image.dtype)
    return (1.0 - inside) * image + inside * noise


def train_image(image: tf.Tensor, seed: tf.Tensor, *, size: int, preprocess: Preprocessing,
                augment: str, randaug_layers: int = 2,
                randaug_magnitude: float = 0.0, random_flip: bool = True,
                min_crop_area: float | None = None) -> tf.Tensor:
    """uint8 `[H, W, 3]` -> augmented, normalised float32 `[size, size, 3]`.

    Args:
      seed: `[2]` int64; the same seed gives the same crop, flip and augmentation.
      augment: "randaug", "autoaug", "ft" (cutout) or "none".
      randaug_magnitude: RandAugment M (float; see `randaugment.py`).
      random_flip: horizontal flips (official: on; off for digits, text, ...).
      min_crop_area: smallest crop area fraction; None = the official one (see `random_crop`).
    """
    crop_seed, flip_seed, augment_seed, cutout_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    image = random_crop(image, size, preprocess, crop_seed, min_crop_area)
    image = resize(image, size, preprocess.interpolation)
    if random_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if augment in ("randaug", "autoaug"):
        pixels = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
        if augment == "randaug":
            pixels = randaugment.randaugment(pixels, randaug_layers, randaug_magnitude,
                                             augment_seed)
        else:
            pixels = randaugment.autoaugment(pixels, augment_seed)
        image = tf.cast(pixels, tf.float32)
    image = normalize(image, preprocess)
    if augment == "ft":
        image = cutout_noise(image, cutout_seed)
    image.set_shape([size, size, 3])
    return image
