"""Image files and eval preprocessing without TensorFlow: PIL decodes, numpy resizes.

    from effnetv2_jax import images
    pixels = images.read_image("cat.jpg")                       # uint8 [H, W, 3]
    x = images.eval_image(pixels, 384, preprocess)              # float32 [384, 384, 3]

`eval_image` is the data pipeline's eval function (`effnetv2_jax/data/preprocess.py`, official
`preprocessing.py` / `preprocess_legacy.py` `preprocess_for_eval`) re-implemented on numpy, so the
core install (no `data` extra) classifies files and arrays:

* centre crop: a square of side `int(size / (size + crop_padding) * min(H, W))` computed in
  float32, offset `(H - side) // 2` (V2) or `(H - side + 1) // 2` (legacy bicubic); skipped
  (the whole image is resized) at `size >= squash_min_size` or for the fine-tune crop;
* resize to `size x size`: "bilinear" is `tf.image.resize(method="bilinear", antialias=False)`
  (half-pixel centres); "bicubic" is `tf.compat.v1.image.resize_bicubic(align_corners=False)`
  (no half-pixel centres, Keys cubic with a = -0.75 sampled from TensorFlow's 1024-entry table,
  edge pixels repeated), both separable with the same sample positions and weights as
  TensorFlow's kernels (`resize_bilinear_op.cc`, `resize_bicubic_op.cc`);
* normalise `(x - mean) / std` in float32.

Decoding is PIL's (JPEG through libjpeg-turbo, as TensorFlow's `decode_image`); neither applies
the EXIF orientation. tests/test_images.py measures the difference to the TensorFlow pipeline on
scikit-image's sample photos.
"""

from __future__ import annotations

import os

import numpy as np
from etils import epath

from effnetv2_jax.preprocessing import Preprocessing

FORMATS = "JPEG, PNG, GIF, BMP or WebP"
_TABLE_SIZE = 1024  # TensorFlow's bicubic coefficient table (resize_bicubic_op.cc kTableSize)


class ImageError(ValueError):
    """An image path that does not exist or a file that is not a decodable image."""


def looks_like_image(head: bytes) -> bool:
    """The file signatures of the formats read here (those TF's `decode_image` reads)."""
    return (head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM"))
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"))


def _to_rgb(image) -> np.ndarray:
    """A PIL image -> uint8 [H, W, 3]: grey repeated, alpha dropped (not composited), CMYK
    converted, 16-bit grey scaled to 8 bits by `x // 256` (TF's `convert_image_dtype`)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(image).astype(np.int64) // 256
        return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=-1)
    if image.mode == "RGBA" or image.mode == "LA":
        return np.asarray(image.convert("RGBA" if image.mode == "RGBA" else "LA")
                          .convert("RGB"))
    return np.asarray(image.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file (JPEG, PNG, GIF, BMP, WebP), local or gs://..., -> uint8 [height, width,
    3]; the first frame of an animation.

    Raises ImageError with a one-line message when the path is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    file = epath.Path(path)  # local, or gs://... (effnetv2_jax/paths.py)
    if not file.exists():
        raise ImageError(f"{path}: no such file")
    if file.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        with file.open("rb") as f:
            if not looks_like_image(f.read(12)):
                raise ImageError(f"{path}: not a readable image ({FORMATS}): unknown file format")
            f.seek(0)
            with Image.open(f) as image:
                image.load()  # a truncated file fails here, not later
                return _to_rgb(image)
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageError):
            raise
        reason = str(error).strip().split(". ")[0].rstrip(".")
        raise ImageError(f"{path}: not a readable image ({FORMATS}): "
                         f"{reason[:120] or 'decoding failed'}") from None


def as_rgb(image) -> np.ndarray:
    """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] pixels (uint8, or float in 0-255) ->
    [H, W, 3]; grey is repeated, alpha dropped."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ImageError(f"expected an image [height, width, 1|3|4], got shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ImageError(f"expected uint8 or float pixels, got dtype {image.dtype}")
    return image[:, :, :3]


def center_crop_window(height: int, width: int, size: int,
                       preprocess: Preprocessing) -> tuple[int, int, int]:
    """`(offset_y, offset_x, side)` of the eval centre crop in pixels, as
    `data.preprocess.center_crop_window` computes it (the ratio and product in float32)."""
    ratio = np.float32(size / (size + preprocess.crop_padding))
    side = max(int(ratio * np.float32(min(height, width))), 1)
    round_up = 1 if preprocess.interpolation == "bicubic" else 0
    return (height - side + round_up) // 2, (width - side + round_up) // 2, side


def squashes(size: int, preprocess: Preprocessing) -> bool:
    """True when eval at `size` resizes the whole image instead of centre-cropping."""
    if preprocess.crop == "resize":
        return True
    return preprocess.squash_min_size is not None and size >= preprocess.squash_min_size


def _bilinear_taps(in_size: int, out_size: int):
    """TF's half-pixel bilinear sample positions: (lower, upper, lerp), each [out]."""
    scale = np.float32(in_size / out_size)
    centre = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centre)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(centre), in_size - 1).astype(np.int64)
    return lower, upper, (centre - floor).astype(np.float32)


def _bicubic_table() -> np.ndarray:
    """TF's legacy Keys-cubic coefficient table (a = -0.75): [table + 1, 2] float32 holding the
    weights of the nearer and the farther neighbour."""
    a = -0.75
    x = np.arange(_TABLE_SIZE + 1, dtype=np.float64) / _TABLE_SIZE
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    return np.stack([near, far], axis=-1).astype(np.float32)


def _bicubic_taps(in_size: int, out_size: int):
    """TF's legacy bicubic taps (position `out * in / out`, tabulated weights, indices clamped
    to the image): (indices [4, out], weights [4, out])."""
    table = _bicubic_table()
    position = np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)
    base = np.floor(position).astype(np.int64)
    # lrintf rounds half to even, as np.rint does.
    offset = np.rint((position - base) * np.float32(_TABLE_SIZE)).astype(np.int64)
    weights = np.stack([table[offset, 1], table[offset, 0], table[_TABLE_SIZE - offset, 0],
                        table[_TABLE_SIZE - offset, 1]])
    indices = np.stack([np.clip(base - 1 + k, 0, in_size - 1) for k in range(4)])
    return indices, weights


def _along(image: np.ndarray, axis: int, indices, weights) -> np.ndarray:
    """sum_k weights[k] * image[indices[k]] along `axis` (0: rows, 1: columns), float32."""
    shape = (-1, 1, 1) if axis == 0 else (1, -1, 1)
    total = np.zeros(image.shape[:axis] + (indices.shape[1],) + image.shape[axis + 1:],
                     np.float32)
    for index, weight in zip(indices, weights):
        total += np.take(image, index, axis=axis) * weight.reshape(shape)
    return total


def resize(image: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """[H, W, 3] pixels -> float32 [size, size, 3] with the official convention (see the module
    docstring); values are not clipped (bicubic overshoots 0-255 as TensorFlow's does).

    The order of the passes and the arithmetic follow TensorFlow's kernels (bilinear: columns
    then rows as `a + (b - a) * lerp`; bicubic: rows then columns), so most outputs are equal
    to the last bit."""
    image = np.asarray(image, np.float32)
    if interpolation == "bilinear":
        for axis in (1, 0):
            lower, upper, lerp = _bilinear_taps(image.shape[axis], size)
            a, b = np.take(image, lower, axis=axis), np.take(image, upper, axis=axis)
            image = a + (b - a) * lerp.reshape((-1, 1, 1) if axis == 0 else (1, -1, 1))
        return image
    if interpolation == "bicubic":
        for axis in (0, 1):
            image = _along(image, axis, *_bicubic_taps(image.shape[axis], size))
        return image
    raise ValueError(f"unknown interpolation {interpolation!r} (valid: bilinear, bicubic)")


def normalize(image: np.ndarray, preprocess: Preprocessing) -> np.ndarray:
    """`(x - mean) / std` per channel, float32."""
    mean = np.asarray(preprocess.mean, np.float32)
    std = np.asarray(preprocess.std, np.float32)
    return (image.astype(np.float32) - mean) / std


def eval_image(image, size: int, preprocess: Preprocessing) -> np.ndarray:
    """Pixels [H, W, 1|3|4] (uint8, or float in 0-255) -> normalised float32 [size, size, 3]:
    centre crop or squash, resize, normalise."""
    image = as_rgb(image)
    if not squashes(size, preprocess):
        top, left, side = center_crop_window(image.shape[0], image.shape[1], size, preprocess)
        image = image[top:top + side, left:left + side]
    return normalize(resize(image, size, preprocess.interpolation), preprocess)


def preprocess_images(images, preprocess: Preprocessing, size: int) -> np.ndarray:
    """Decoded images of any sizes -> normalised float32 [batch, size, size, 3]."""
    return np.stack([eval_image(image, size, preprocess) for image in images])
