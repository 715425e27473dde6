"""Each of the 16 ops, eagerly and inside a tf.data map, against PIL or a numpy reimplementation.

References are independent of TF: PIL's ImageOps / ImageEnhance where the official op is
defined as "equivalent of PIL X", numpy for the official formulas (geometric ops, sharpness,
solarize-add, cutout).
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from effnetv2_jax.data import augment_ops as ops
from effnetv2_jax.data.randaugment import level_to_arg


def sample_image(seed=0, height=23, width=31, low=0, high=256):
    """A random uint8 image with some structure (a gradient plus noise)."""
    rng = np.random.RandomState(seed)
    gradient = np.linspace(0, 1, width)[None, :, None] * np.linspace(0.3, 1, height)[:, None, None]
    image = low + (high - 1 - low) * (0.6 * gradient + 0.4 * rng.rand(height, width, 3))
    return image.astype(np.uint8)


def eager_and_dataset(fn, image):
    """fn(image) eagerly and inside a tf.data map; asserts both agree and returns the result."""
    eager = fn(tf.constant(image)).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors(image).map(fn))).numpy()
    np.testing.assert_array_equal(eager, mapped)
    assert eager.dtype == np.uint8 and eager.shape == image.shape
    return eager


def pil(image, fn):
    return np.asarray(fn(Image.fromarray(image)).convert("RGB"))


# --- ops with no argument -------------------------------------------------------------------

@pytest.mark.parametrize("low,high", [(0, 256), (40, 200)])
def test_autocontrast_matches_pil(low, high):
    image = sample_image(1, low=low, high=high)
    out = eager_and_dataset(ops.autocontrast, image)
    np.testing.assert_array_equal(out, pil(image, ImageOps.autocontrast))
    assert out.min() == 0 and out.max() == 255


def test_autocontrast_leaves_a_flat_channel():
    image = sample_image(2)
    image[..., 1] = 77
    assert np.all(eager_and_dataset(ops.autocontrast, image)[..., 1] == 77)


@pytest.mark.parametrize("seed", [0, 3])
def test_equalize_matches_pil(seed):
    image = sample_image(seed, low=30, high=120)
    out = eager_and_dataset(ops.equalize, image)
    np.testing.assert_array_equal(out, pil(image, ImageOps.equalize))
    assert not np.array_equal(out, image)


def test_equalize_leaves_a_flat_image():
    image = np.full((5, 6, 3), 90, np.uint8)
    np.testing.assert_array_equal(eager_and_dataset(ops.equalize, image), image)


def test_invert_matches_pil():
    image = sample_image(4)
    np.testing.assert_array_equal(eager_and_dataset(ops.invert, image),
                                  pil(image, ImageOps.invert))


# --- magnitude-driven ops, at the official arguments for a few magnitudes --------------------

@pytest.mark.parametrize("magnitude,bits", [(2, 0), (5, 2), (10, 4), (15, 6), (20, 8)])
def test_posterize_matches_pil(magnitude, bits):
    assert level_to_arg("Posterize", magnitude) == bits
    image = sample_image(5)
    out = eager_and_dataset(lambda x: ops.posterize(x, bits), image)
    expected = np.zeros_like(image) if bits == 0 else pil(image, lambda im: ImageOps.posterize(
        im, bits))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("magnitude,threshold", [(3, 76), (7, 179), (10, 256), (15, 384)])
def test_solarize_matches_pil(magnitude, threshold):
    assert level_to_arg("Solarize", magnitude) == threshold
    image = sample_image(6)
    out = eager_and_dataset(lambda x: ops.solarize(x, threshold), image)
    np.testing.assert_array_equal(out, pil(image, lambda im: ImageOps.solarize(im, threshold)))
    assert np.array_equal(out, image) == (threshold >= 256)  # no-op for M >= 10


@pytest.mark.parametrize("magnitude,addition", [(3, 33), (10, 110), (20, 220)])
def test_solarize_add_matches_numpy(magnitude, addition):
    assert level_to_arg("SolarizeAdd", magnitude) == addition
    image = sample_image(7)
    out = eager_and_dataset(lambda x: ops.solarize_add(x, addition), image)
    wide = image.astype(int)
    expected = np.where(wide < 128, np.clip(wide + addition, 0, 255), wide)
    np.testing.assert_array_equal(out, expected)


ENHANCE = {"Color": (ops.color, ImageEnhance.Color),
           "Contrast": (ops.contrast, ImageEnhance.Contrast),
           "Brightness": (ops.brightness, ImageEnhance.Brightness)}


@pytest.mark.parametrize("name", sorted(ENHANCE))
@pytest.mark.parametrize("magnitude", [0, 2.5, 5, 10, 20])
def test_enhance_ops_match_pil(name, magnitude):
    factor = level_to_arg(name, magnitude)
    assert factor == pytest.approx(magnitude / 10 * 1.8 + 0.1)
    op, enhancer = ENHANCE[name]
    image = sample_image(8)
    out = eager_and_dataset(lambda x: op(x, factor), image)
    np.testing.assert_array_equal(out, pil(image, lambda im: enhancer(im).enhance(factor)))
    if magnitude == 5:  # factor 1.0: identity
        np.testing.assert_array_equal(out, image)


def test_contrast_official_bug_blends_towards_pixel_count():
    image = sample_image(9, height=16, width=32)  # 512 pixels: "mean" 512 / 256 = 2
    out = eager_and_dataset(lambda x: ops.contrast(x, 0.0, official_bug=True), image)
    assert np.all(out == 2)
    big = sample_image(9, height=260, width=260)  # more than 65,280 pixels: clipped to 255
    assert np.all(ops.contrast(tf.constant(big), 0.0, official_bug=True).numpy() == 255)


def numpy_sharpness(image, factor):
    """Smooth = floor((3x3 sum + 4 * centre) / 13) on the interior, border kept; then the
    float32 blend with truncation."""
    x = image.astype(np.int64)
    h, w = image.shape[:2]
    box = sum(x[dy:h - 2 + dy, dx:w - 2 + dx] for dy in range(3) for dx in range(3))
    smooth = x.copy()
    smooth[1:-1, 1:-1] = (box + 4 * x[1:-1, 1:-1]) // 13
    a, b = smooth.astype(np.float32), image.astype(np.float32)
    return np.clip(a + np.float32(factor) * (b - a), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("magnitude", [0, 5, 10, 20])
def test_sharpness_matches_numpy_and_pil(magnitude):
    factor = level_to_arg("Sharpness", magnitude)
    image = sample_image(10)
    out = eager_and_dataset(lambda x: ops.sharpness(x, factor), image)
    np.testing.assert_array_equal(out, numpy_sharpness(image, factor))
    # PIL rounds the filtered value where the official op truncates: one level, scaled by the
    # blend's |1 - factor|.
    pil_out = pil(image, lambda im: ImageEnhance.Sharpness(im).enhance(factor))
    assert np.abs(out.astype(int) - pil_out).max() <= 2 + int(np.ceil(abs(1 - factor)))
    np.testing.assert_array_equal(out[0], image[0])  # border rows keep their pixels...
    if magnitude != 5:
        assert not np.array_equal(out[1:-1, 1:-1], image[1:-1, 1:-1])  # ...the interior does not


def test_sharpness_leaves_images_too_small_to_filter():
    image = sample_image(11, height=2, width=9)
    np.testing.assert_array_equal(eager_and_dataset(lambda x: ops.sharpness(x, 1.9), image),
                                  image)


# --- geometric ops ---------------------------------------------------------------------------

def numpy_transform(image, a, fill=128):
    """Nearest-neighbour inverse mapping: output (x, y) <- input (a0 x + a1 y + a2, b0 x + b1 y
    + b2), coordinates rounded half away from zero, float32 like the TF kernel."""
    a = np.asarray(a, np.float32)
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x_in = a[0] * xs + a[1] * ys + a[2]
    y_in = a[3] * xs + a[4] * ys + a[5]
    x_in = (np.sign(x_in) * np.floor(np.abs(x_in) + 0.5)).astype(int)
    y_in = (np.sign(y_in) * np.floor(np.abs(y_in) + 0.5)).astype(int)
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    out = np.full_like(image, fill)
    out[inside] = image[y_in[inside], x_in[inside]]
    return out


@pytest.mark.parametrize("magnitude", [1.5, 4])
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("name", ["TranslateX", "TranslateY"])
def test_translate_matches_pil_and_numpy(name, magnitude, sign):
    pixels = sign * level_to_arg(name, magnitude)
    assert abs(pixels) == pytest.approx(magnitude * 10)  # absolute pixels, whatever the size
    image = sample_image(11, height=40, width=50)
    op = ops.translate_x if name == "TranslateX" else ops.translate_y
    out = eager_and_dataset(lambda x: op(x, pixels), image)
    affine = (1, 0, pixels, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, pixels)
    expected = pil(image, lambda im: im.transform(im.size, Image.AFFINE, affine,
                                                  resample=Image.NEAREST, fillcolor=(128,) * 3))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, numpy_transform(image, affine))
    if name == "TranslateX" and pixels > 0:  # content moves left, grey enters on the right
        np.testing.assert_array_equal(out[:, 0], image[:, int(pixels)])
        assert np.all(out[:, -int(pixels):] == 128)


@pytest.mark.parametrize("pixels", [3.33, -3.33, 6.7, -6.7, 2.5, -2.5, 0.4, -0.5])
@pytest.mark.parametrize("name", ["TranslateX", "TranslateY"])
def test_fractional_translations_sample_the_nearest_pixel(name, pixels):
    """Progressive stages use fractional magnitudes (M = 6.67 gives 66.7 px)."""
    image = sample_image(16, height=20, width=24)
    op = ops.translate_x if name == "TranslateX" else ops.translate_y
    affine = (1, 0, pixels, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, pixels)
    np.testing.assert_array_equal(eager_and_dataset(lambda x: op(x, pixels), image),
                                  numpy_transform(image, affine))


@pytest.mark.parametrize("magnitude", [3, 10])
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("name", ["ShearX", "ShearY"])
def test_shear_matches_numpy(name, magnitude, sign):
    level = sign * level_to_arg(name, magnitude)
    assert abs(level) == pytest.approx(magnitude / 10 * 0.3)
    image = sample_image(12)
    op = ops.shear_x if name == "ShearX" else ops.shear_y
    out = eager_and_dataset(lambda x: op(x, level), image)
    affine = (1, level, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, level, 1, 0)
    np.testing.assert_array_equal(out, numpy_transform(image, affine))
    np.testing.assert_array_equal(out[0], image[0] if name == "ShearX" else out[0])
    assert (out == 128).all(axis=-1).any()  # some pixels were uncovered and filled


@pytest.mark.parametrize("magnitude", [2, 9])
@pytest.mark.parametrize("sign", [1, -1])
def test_rotate_matches_numpy_and_pil(magnitude, sign):
    degrees = sign * level_to_arg("Rotate", magnitude)
    assert abs(degrees) == pytest.approx(magnitude * 3)
    image = sample_image(13, height=31, width=31)
    out = eager_and_dataset(lambda x: ops.rotate(x, degrees), image)
    radians = np.deg2rad(degrees)
    cos, sin = np.cos(radians), np.sin(radians)
    centre = (31 - 1) / 2  # tfa: rotate about the pixel-grid centre
    affine = (cos, -sin, centre - cos * centre + sin * centre,
              sin, cos, centre - sin * centre - cos * centre)
    expected = numpy_transform(image, affine)
    assert np.mean(out == expected) > 0.995  # float32 rounding of the offsets
    # Positive degrees turn the content counter-clockwise on screen, as PIL's rotate does.
    pil_out = pil(image, lambda im: im.rotate(degrees, resample=Image.NEAREST,
                                              fillcolor=(128,) * 3))
    opposite = pil(image, lambda im: im.rotate(-degrees, resample=Image.NEAREST,
                                               fillcolor=(128,) * 3))
    assert np.mean(out == pil_out) > 0.9 > np.mean(out == opposite)


def test_rotate_by_zero_is_identity():
    image = sample_image(14)
    np.testing.assert_array_equal(eager_and_dataset(lambda x: ops.rotate(x, 0.0), image), image)


# --- cutout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("magnitude,pad", [(2, 8), (5, 20)])
def test_cutout_fills_a_clipped_square_with_grey(magnitude, pad):
    assert level_to_arg("Cutout", magnitude) == pad
    image = sample_image(15, height=48, width=48)
    image[image == 128] = 127  # so the filled pixels are recognisable
    seeds = tf.stack([tf.range(40, dtype=tf.int64), tf.fill([40], tf.constant(7, tf.int64))], 1)
    mapped = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda seed: ops.cutout(tf.constant(image), pad, seed))
    centres = set()
    for s, out in enumerate(mapped.as_numpy_iterator()):
        if s < 2:  # eagerly too
            np.testing.assert_array_equal(ops.cutout(tf.constant(image), pad, seeds[s]).numpy(),
                                          out)
        filled = np.all(out == 128, axis=-1)
        rows, cols = np.nonzero(filled)
        assert filled.any()
        # A rectangle, no larger than 2 * pad per side; everything else untouched.
        assert filled.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        assert np.ptp(rows) + 1 <= 2 * pad and np.ptp(cols) + 1 <= 2 * pad
        np.testing.assert_array_equal(out[~filled], image[~filled])
        # Centre c covers [c - pad, c + pad) clipped: recover c from an unclipped edge.
        centre_y = rows.min() + pad if rows.min() > 0 else rows.max() + 1 - pad
        centre_x = cols.min() + pad if cols.min() > 0 else cols.max() + 1 - pad
        centres.add((centre_y, centre_x))
    assert len(centres) > 30  # the centre moves with the seed
