"""Prediction without TensorFlow: effnetv2_jax/images.py against the TF eval pipeline
(effnetv2_jax/data/preprocess.py), and `predict` in a process where TensorFlow cannot be imported.

Measured on scikit-image's sample photos (tests/test_images.py, this machine):
* on the same pixels (arrays, PNG files) the numpy preprocessing equals the TF pipeline's
  bit for bit, for the V2 bilinear crop and squash, the V1 bicubic and the Lite settings;
* JPEG files: PIL decodes with libjpeg's accurate integer IDCT and equals TF's
  `decode_jpeg(dct_method="INTEGER_ACCURATE")` exactly; TF's `decode_image` default is the fast
  IDCT, which differs by up to 7 levels (mean under 1.5). Through a random EfficientNetV2-B0 whose
  BN statistics are those of the photos (so its logits depend on the image), logits differ by
  at most 0.24 at 224 px bicubic and 0.13 at 384 px bilinear (logits up to 5); the top-1 is the
  same on all 19 photos at both sizes.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from flax import nnx
from PIL import Image

import effnetv2_jax
from effnetv2_jax import images
from effnetv2_jax.convert.writer import random_weights, write_model
from effnetv2_jax.data import preprocess as tf_preprocess
from effnetv2_jax.models.variants import (LITE_PREPROCESSING, V1_PREPROCESSING,
                                          V2_PREPROCESSING)

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera", "coins", "hubble_deep_field",
          "immunohistochemistry", "brick", "grass", "gravel", "retina", "colorwheel", "horse",
          "moon", "page", "text", "logo", "clock")
CASES = [(V2_PREPROCESSING, 224), (V2_PREPROCESSING, 384), (V1_PREPROCESSING, 224),
         (V1_PREPROCESSING, 300), (LITE_PREPROCESSING, 240)]
JPEG_LOGIT_BOUND = 0.3     # measured 0.24


def _photo(name):
    image = getattr(skimage.data, name)()
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    return image[..., :3] if image.ndim == 3 else image


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    files = {}
    for name in PHOTOS:
        for suffix, options in (("jpg", {"quality": 90}), ("png", {})):
            path = directory / f"{name}.{suffix}"
            Image.fromarray(_photo(name)).save(path, **options)
            files[name, suffix] = str(path)
    return files


def _tf_eval(pixels, size, preprocess):
    return tf_preprocess.eval_image(tf.convert_to_tensor(images.as_rgb(pixels)), size,
                                    preprocess).numpy()


@pytest.mark.parametrize("preprocess,size", CASES)
def test_same_pixels_give_the_tf_pipelines_tensors_bit_for_bit(preprocess, size):
    for name in PHOTOS:
        pixels = _photo(name)
        ours = images.eval_image(pixels, size, preprocess)
        assert ours.dtype == np.float32 and ours.shape == (size, size, 3)
        np.testing.assert_array_equal(ours, _tf_eval(pixels, size, preprocess), err_msg=name)


def test_odd_shapes_and_float_pixels_match_tf():
    rng = np.random.RandomState(0)
    for shape in ((1, 1, 3), (7, 500, 3), (500, 3, 3), (33, 47, 1), (64, 64, 4)):
        pixels = rng.randint(0, 256, shape).astype(np.uint8)
        for preprocess, size in CASES[::2]:
            np.testing.assert_array_equal(images.eval_image(pixels, size, preprocess),
                                          _tf_eval(pixels, size, preprocess), err_msg=shape)
    floats = rng.uniform(0, 255, (90, 120, 3)).astype(np.float32)
    np.testing.assert_allclose(images.eval_image(floats, 64, V1_PREPROCESSING),
                               _tf_eval(floats, 64, V1_PREPROCESSING), atol=1e-5)


def test_decoding_matches_tf(photo_files):
    for (name, suffix), path in photo_files.items():
        ours = images.read_image(path)
        encoded = tf.io.read_file(path)
        if suffix == "png":
            np.testing.assert_array_equal(ours, tf_preprocess.decode(encoded).numpy())
            continue
        accurate = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
        np.testing.assert_array_equal(ours, accurate.numpy(), err_msg=name)
        fast = tf_preprocess.decode(encoded).numpy().astype(int)  # the pipeline's decode
        difference = np.abs(ours.astype(int) - fast)
        assert difference.max() <= 10 and difference.mean() < 1.5, (name, difference.max())


@pytest.mark.slow  # compiles a B0 at two sizes
def test_jpeg_files_through_a_model_match_the_tf_pipeline(photo_files):
    """Logits of a random B0 whose BN statistics are the photos' own (so they vary with the
    image), on JPEG files through both pipelines."""
    abstract = effnetv2_jax.abstract_model("efficientnetv2-b0", bn_momentum=0.0,
                                           dropout_rate=0.0, survival_prob=1.0, conv_impl="xla")
    graphdef, params, batch_stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    for state, values in zip((params, batch_stats), random_weights(abstract, 0)):
        nnx.replace_by_pure_dict(state, values)
    model = nnx.merge(graphdef, params, batch_stats)
    paths = [photo_files[name, "jpg"] for name in PHOTOS]
    for preprocess, size in ((V1_PREPROCESSING, 224), (V2_PREPROCESSING, 384)):
        ours = np.stack([images.eval_image(images.read_image(p), size, preprocess)
                         for p in paths])
        theirs = np.stack([tf_preprocess.eval_image(tf_preprocess.decode(tf.io.read_file(p)),
                                                    size, preprocess).numpy() for p in paths])
        nnx.jit(lambda m, x: m(x, train=True))(model, theirs)  # BN statistics of the photos
        ours, theirs = (np.asarray(nnx.jit(lambda m, x: m(x))(model, x)) for x in (ours, theirs))
        top2 = np.sort(theirs, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]  # shown where the top-1 differs
        difference = np.abs(ours - theirs).max(axis=1)
        same = ours.argmax(1) == theirs.argmax(1)
        print(f"{preprocess.interpolation} {size}px: logits max diff {difference.max():.3f} "
              f"(|logit| <= {np.abs(theirs).max():.2f}), top-1 agrees on {same.sum()}/"
              f"{len(same)}, TF top-2 margins where not {np.round(margin[~same], 3)}")
        assert len(set(theirs.argmax(1))) > 1  # the logits depend on the image
        assert difference.max() <= JPEG_LOGIT_BOUND
        assert same.all()  # measured: 19/19 at both sizes


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.fromarray(_photo("chelsea")).save(tmp_path / "cat.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cat.jpg").read_bytes()[:300])
    with pytest.raises(images.ImageError, match="no such file"):
        images.read_image(tmp_path / "missing.png")
    with pytest.raises(images.ImageError, match="is a directory"):
        images.read_image(tmp_path)
    with pytest.raises(images.ImageError, match="unknown file format"):
        images.read_image(tmp_path / "notes.jpg")
    with pytest.raises(images.ImageError, match=r"cut.jpg: not a readable image"):
        images.read_image(tmp_path / "cut.jpg")


NO_TF_SCRIPT = textwrap.dedent("""\
    import json, sys
    for name in ("tensorflow", "tensorflow_datasets", "torch", "timm", "keras"):
        sys.modules[name] = None          # "import name" now raises ModuleNotFoundError
    import numpy as np
    import effnetv2_jax
    from effnetv2_jax.predict_cli import main
    checkpoint, jpeg, png = sys.argv[1:4]
    loaded = effnetv2_jax.load_checkpoint(checkpoint)
    array = np.asarray(__import__("PIL.Image").Image.open(png).convert("RGB"))
    result = effnetv2_jax.predict(loaded, [jpeg, png, array], top_k=3)
    rc = main(["--checkpoint", checkpoint, jpeg, "--top-k", "1"])
    print("RESULT " + json.dumps({"indices": result.indices.tolist(), "rc": rc,
                                  "tf": sys.modules["tensorflow"] is None}))
    """)


def test_predict_runs_without_tensorflow(tmp_path):
    """A process where `import tensorflow` fails classifies files and arrays, with the
    same classes as this process (which has TensorFlow) gives."""
    model = effnetv2_jax.create_model("efficientnetv2-b0", num_classes=10,
                                      block_strings=("r1_k3_s1_e1_i8_o8_c1",
                                                     "r1_k3_s2_e4_i8_o16_se0.25"),
                                      feature_size=32)
    write_model(model, str(tmp_path / "ckpt"), model_name="efficientnetv2-b0", source="test",
                model_overrides={"block_strings": ["r1_k3_s1_e1_i8_o8_c1",
                                                   "r1_k3_s2_e4_i8_o16_se0.25"],
                                 "feature_size": 32})
    Image.fromarray(_photo("coffee")).save(tmp_path / "coffee.jpg")
    Image.fromarray(_photo("chelsea")).save(tmp_path / "cat.png")
    args = [str(tmp_path / "ckpt"), str(tmp_path / "coffee.jpg"), str(tmp_path / "cat.png")]
    run = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, *args], capture_output=True,
                         text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "JAX_NUM_CPU_DEVICES": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(next(line for line in run.stdout.splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])
    assert result["tf"] and result["rc"] == 0
    assert "coffee.jpg" in run.stdout
    here = effnetv2_jax.predict(effnetv2_jax.load_checkpoint(args[0]), args[1:], top_k=3)
    assert result["indices"][:2] == here.indices.tolist()
    assert result["indices"][2] == result["indices"][1]  # the PNG file == its pixels
