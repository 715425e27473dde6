"""Per-image preprocessing against the official `preprocessing.py` and independent implementations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_jax.data import preprocess as prep
from effnetv2_jax.data.config import DataConfig
from effnetv2_jax.preprocessing import Preprocessing

V2 = Preprocessing()
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
V1 = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic",
                   squash_min_size=None)
LITE = Preprocessing(mean=(127.0,) * 3, std=(128.0,) * 3, interpolation="bicubic",
                     squash_min_size=None)


def photo(height, width, seed=0):
    rng = np.random.RandomState(seed)
    smooth = np.cumsum(np.cumsum(rng.randn(height, width, 3), 0), 1)
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    return (255 * smooth).astype(np.uint8)


def seed(i):
    return tf.constant([i, 99], tf.int64)


# --- resize conventions ---------------------------------------------------------------------

@pytest.mark.parametrize("shape,size", [((7, 9), 16), ((40, 30), 16)])
def test_bilinear_matches_jax_half_pixel_resize(shape, size):
    image = photo(*shape)
    out = prep.resize(tf.constant(image), size, "bilinear").numpy()
    expected = jax.image.resize(jnp.asarray(image, jnp.float32), (size, size, 3), "bilinear",
                                antialias=False)
    np.testing.assert_allclose(out, np.asarray(expected), atol=1e-3)


def legacy_bicubic(image, size):
    """TF1 `resize_bicubic(align_corners=False)`: source = dest * in/out (no half-pixel
    centres), Keys cubic with a = -0.75, taps clamped at the border, and the TF kernel's
    1024-entry weight table."""
    def weights(t):
        a, t = -0.75, abs(t)
        if t <= 1:
            return ((a + 2) * t - (a + 3)) * t * t + 1
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a if t < 2 else 0.0

    def axis(n_in):
        scale = n_in / size
        rows = np.zeros((size, n_in))
        for out in range(size):
            source = out * scale
            base = int(np.floor(source))
            delta = np.round((source - base) * 1024) / 1024
            for k in range(-1, 3):
                rows[out, min(max(base + k, 0), n_in - 1)] += weights(k - delta)
        return rows

    x = image.astype(np.float64)
    return np.einsum("ih,jw,hwc->ijc", axis(image.shape[0]), axis(image.shape[1]), x)


@pytest.mark.parametrize("shape,size", [((9, 12), 20), ((37, 29), 16)])
def test_bicubic_is_the_legacy_tf1_resize(shape, size):
    image = photo(*shape, seed=1)
    out = prep.resize(tf.constant(image), size, "bicubic").numpy()
    np.testing.assert_allclose(out, legacy_bicubic(image, size), atol=1e-2)
    # ...which differs from a half-pixel-centred bicubic resize.
    modern = tf.image.resize(image, [size, size], "bicubic").numpy()
    assert np.abs(out - modern).max() > 1.0


# --- eval ------------------------------------------------------------------------------------

def test_center_crop_window_follows_the_official_arithmetic():
    # side = int(224 / 256 * 296) = 259; V2 offsets floor((H - side) / 2), legacy rounds up.
    window = [int(v) for v in prep.center_crop_window(296, 400, 224, V2)]
    assert window == [18, 70, 259]
    assert [int(v) for v in prep.center_crop_window(296, 400, 224, V1)] == [19, 71, 259]
    wide = dataclasses.replace(V2, crop_padding=0)
    assert [int(v) for v in prep.center_crop_window(296, 400, 224, wide)] == [0, 52, 296]


def test_v2_eval_crops_below_320_and_squashes_from_320():
    image = photo(60, 80, seed=2)
    for size in (160, 319):
        out = prep.eval_image(tf.constant(image), size, V2).numpy()
        side = int(np.float32(size / (size + 32)) * np.float32(60))
        y, x = (60 - side) // 2, (80 - side) // 2
        crop = image[y:y + side, x:x + side].astype(np.float32)
        expected = jax.image.resize(crop, (size, size, 3), "bilinear", antialias=False)
        np.testing.assert_allclose(out, (np.asarray(expected) - 128) / 128, atol=1e-4)
    for size in (320, 384):
        out = prep.eval_image(tf.constant(image), size, V2).numpy()
        expected = jax.image.resize(image.astype(np.float32), (size, size, 3), "bilinear",
                                    antialias=False)
        np.testing.assert_allclose(out, (np.asarray(expected) - 128) / 128, atol=1e-4)
    assert prep.squashes(320, V2) and not prep.squashes(319, V2) and not prep.squashes(600, V1)


@pytest.mark.parametrize("preprocess,expected", [
    (V2, [(v - 128) / 128 for v in (10, 100, 250)]),
    (LITE, [(v - 127) / 128 for v in (10, 100, 250)]),
    (V1, [(v - m) / s for v, m, s in zip((10, 100, 250), IMAGENET_MEAN, IMAGENET_STD)]),
])
def test_normalisation_comes_from_the_weights_metadata(preprocess, expected):
    flat = np.broadcast_to(np.array([10, 100, 250], np.uint8), (30, 40, 3))
    out = prep.eval_image(tf.constant(flat), 24, preprocess).numpy()
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-5, atol=1e-5)


# --- train -----------------------------------------------------------------------------------

def crop_shapes(preprocess, image, n=300):
    dataset = tf.data.Dataset.range(n).map(
        lambda i: tf.shape(prep.random_crop(tf.constant(image), 64, preprocess,
                                            tf.stack([i, tf.constant(5, tf.int64)]))))
    return np.array(list(dataset.as_numpy_iterator()))[:, :2]


def test_v2_crop_covers_5_to_100_percent_of_the_area():
    image = photo(100, 120)
    shapes = crop_shapes(V2, image)
    area = shapes.prod(1) / (100 * 120)
    aspect = shapes[:, 1] / shapes[:, 0]
    assert area.min() >= 0.045 and area.min() < 0.08 and area.max() > 0.7
    assert aspect.min() > 0.7 and aspect.max() < 1.4


def test_legacy_crop_covers_8_to_100_percent_and_falls_back_to_the_centre_crop():
    shapes = crop_shapes(V1, photo(100, 120))
    assert (shapes.prod(1) / (100 * 120)).min() >= 0.075
    # A 4 x 400 image has no crop with aspect in [3/4, 4/3] and area >= 8%: centre crop.
    thin = photo(4, 400, seed=3)
    out = prep.random_crop(tf.constant(thin), 224, V1, seed(0)).numpy()
    y, x, side = (int(v) for v in prep.center_crop_window(4, 400, 224, V1))
    np.testing.assert_array_equal(out, thin[y:y + side, x:x + side])


def test_flip_is_random_and_only_horizontal():
    image = photo(20, 20, seed=4)
    preprocess = dataclasses.replace(V2, train_crop="resize")
    plain = prep.eval_image(tf.constant(image), 16, preprocess).numpy()
    flips = []
    for i in range(12):
        out = prep.train_image(tf.constant(image), seed(i), size=16, preprocess=preprocess,
                               augment="none").numpy()
        flips.append(np.array_equal(out, plain[:, ::-1]))
        assert flips[-1] or np.array_equal(out, plain)
    assert 0 < sum(flips) < 12


def test_flip_can_be_turned_off_and_the_crop_area_raised():
    image = photo(20, 20, seed=4)
    preprocess = dataclasses.replace(V2, train_crop="resize")
    plain = prep.eval_image(tf.constant(image), 16, preprocess).numpy()
    for i in range(8):
        out = prep.train_image(tf.constant(image), seed(i), size=16, preprocess=preprocess,
                               augment="none", random_flip=False).numpy()
        np.testing.assert_array_equal(out, plain)
    big = photo(100, 120)
    dataset = tf.data.Dataset.range(200).map(
        lambda i: tf.shape(prep.random_crop(tf.constant(big), 64, V2,
                                            tf.stack([i, tf.constant(5, tf.int64)]), 0.5)))
    areas = np.array(list(dataset.as_numpy_iterator()))[:, :2].prod(1) / (100 * 120)
    assert areas.min() >= 0.48 and areas.max() > 0.9
    with pytest.raises(ValueError, match="min_crop_area must be in"):
        DataConfig(source="synthetic", min_crop_area=1.5)


def test_randaugment_runs_on_uint8_pixels_before_normalising():
    image = photo(40, 50, seed=5)
    out = prep.train_image(tf.constant(image), seed(1), size=32, preprocess=V2,
                           augment="randaug", randaug_magnitude=10.0).numpy()
    pixels = out * 128 + 128
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-4)  # on the uint8 grid
    assert pixels.min() >= 0 and pixels.max() <= 255


def test_finetune_cutout_fills_a_square_with_unit_noise():
    image = photo(24, 30, seed=6)
    preprocess = dataclasses.replace(V2, train_crop="resize")
    plain = prep.eval_image(tf.constant(image), 32, preprocess).numpy()
    sides = []
    for i in range(10):
        out = prep.train_image(tf.constant(image), seed(i), size=32, preprocess=preprocess,
                               augment="ft").numpy()
        base = plain if np.mean(out == plain) > np.mean(out == plain[:, ::-1]) else plain[:, ::-1]
        changed = np.any(out != base, axis=-1)
        rows, cols = np.nonzero(changed)
        assert changed.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # one rectangle
        assert np.ptp(rows) < 16 and np.ptp(cols) < 16  # side up to size / 2
        assert out[changed].min() >= 0 and out[changed].max() < 1  # U[0, 1) noise
        sides.append(np.ptp(rows) + 1)
    assert max(sides) == 16  # unclipped squares have side 2 * (32 // 4)


def test_train_image_is_a_function_of_the_seed():
    image = tf.constant(photo(50, 70, seed=7))
    args = dict(size=32, preprocess=V2, augment="randaug", randaug_magnitude=9.0)
    a = prep.train_image(image, seed(3), **args).numpy()
    np.testing.assert_array_equal(a, prep.train_image(image, seed(3), **args).numpy())
    assert not np.array_equal(a, prep.train_image(image, seed(4), **args).numpy())
    assert a.shape == (32, 32, 3) and a.dtype == np.float32


def test_decode_gives_rgb_for_grey_and_rgba_png():
    grey = tf.io.encode_png(tf.constant(np.full((3, 4, 1), 77, np.uint8)))
    rgba = tf.io.encode_png(tf.constant(np.full((3, 4, 4), [1, 2, 3, 0], np.uint8)))
    np.testing.assert_array_equal(prep.decode(grey).numpy(), np.full((3, 4, 3), 77))
    np.testing.assert_array_equal(prep.decode(rgba).numpy(), np.full((3, 4, 3), [1, 2, 3]))


# --- configuration --------------------------------------------------------------------------

def test_preprocess_checks_fields_and_copies_metadata():
    with pytest.raises(ValueError, match="unknown interpolation 'nearest'.*bilinear, bicubic"):
        Preprocessing(interpolation="nearest")
    with pytest.raises(ValueError, match="unknown train_crop 'random'.*v2, legacy, resize"):
        Preprocessing(train_crop="random")
    with pytest.raises(ValueError, match="std must be > 0"):
        Preprocessing(std=(1.0, 0.0, 1.0))
    assert V2.crop == "v2" and V1.crop == "legacy"
    assert dataclasses.replace(V1, train_crop="resize").crop == "resize"

    @dataclasses.dataclass
    class Metadata:  # the shape of the model registry's per-variant metadata
        mean: tuple = IMAGENET_MEAN
        std: tuple = IMAGENET_STD
        interpolation: str = "bicubic"
        crop_padding: int = 32
        squash_min_size: int | None = None

    assert Preprocessing.from_metadata(Metadata()) == V1
    assert Preprocessing.from_metadata(Metadata(), train_crop="resize").crop == "resize"


def test_data_config_checks_fields():
    with pytest.raises(ValueError, match="unknown source 'hdf5'.*tfds, folder, digits, synthetic"):
        DataConfig(source="hdf5")
    with pytest.raises(ValueError, match="unknown augment 'mixup'.*randaug, autoaug, ft, none"):
        DataConfig(source="synthetic", augment="mixup")
    with pytest.raises(ValueError, match="needs a dataset name"):
        DataConfig(source="tfds")
    with pytest.raises(ValueError, match="needs folder_root"):
        DataConfig(source="folder")


@pytest.mark.parametrize("name,crop,squashes_at_384", [
    ("efficientnetv2-s", "v2", True), ("efficientnetv2-b0", "legacy", False),
    ("efficientnet-b0", "legacy", False), ("efficientnet-lite0", "legacy", False)])
def test_the_model_registry_metadata_selects_the_preprocessing(name, crop, squashes_at_384):
    """The training loop's path: registry metadata -> Preprocessing (the data package itself never
    imports the model)."""
    effnetv2_jax = pytest.importorskip("effnetv2_jax")
    preprocess = Preprocessing.from_metadata(effnetv2_jax.get_variant(name).preprocessing)
    assert preprocess.crop == crop and prep.squashes(384, preprocess) == squashes_at_384
    flat = np.full((20, 20, 3), 200, np.uint8)
    out = prep.eval_image(tf.constant(flat), 16, preprocess).numpy()
    expected = (200 - np.array(preprocess.mean)) / np.array(preprocess.std)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)


def test_one_preprocessing_type_for_the_registry_and_the_pipeline():
    """The model registry's metadata is the type the pipeline takes, so a variant's
    preprocessing goes to the pipeline as it is (the old name `data.Preprocess` is the same
    type); a variant's own has no training crop, and the V2 S-XL defaults are V2-S's."""
    from effnetv2_jax import data
    from effnetv2_jax.models import variants

    s = variants.get_variant("efficientnetv2-s").preprocessing
    assert type(s) is Preprocessing is data.Preprocessing is data.Preprocess
    assert s == Preprocessing() and s.train_crop is None
    assert variants.get_variant("efficientnet-b0").preprocessing == V1
    assert Preprocessing.from_dict({**dataclasses.asdict(LITE), "extra": 1}) == LITE
