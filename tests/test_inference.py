"""load_checkpoint / predict / the predict CLI / the inference notebook.

Two checkpoints: one in the converted layout (`convert.write_model`: no optimizer state, EMA =
weights, ImageNet-1k head) and one in the training layout, written by training's own
`Checkpointer` from a `TrainState` replicated over a 4-device mesh (optimizer state, EMA that
differs from the weights, dataset class names, architecture overrides).
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import skimage.data
import tensorflow as tf
from flax import nnx
from PIL import Image

import effnetv2_jax
from effnetv2_jax import inference
from effnetv2_jax.convert import write_model
from effnetv2_jax.predict_cli import format_table, main as predict_main
from effnetv2_jax.train.checkpoint import Checkpointer
from effnetv2_jax.train.state import create_train_state, split_model

REPO = Path(__file__).resolve().parents[1]
TINY = {"block_strings": ("r1_k3_s1_e1_i8_o8_c1", "r1_k3_s2_e4_i8_o16_se0.25"),
        "feature_size": 32}
DIGITS = [str(i) for i in range(10)]


def random_model(name, seed, **kwargs):
    """A registered variant with random weights and BN statistics (numpy-filled: a real init
    compiles one XLA program per weight shape)."""
    graphdef, params, batch_stats = nnx.split(effnetv2_jax.abstract_model(name, **kwargs),
                                              nnx.Param, nnx.BatchStat)
    rng = np.random.RandomState(seed)
    fan_in = lambda shape: max(1, int(np.prod(shape[:-1])))  # noqa: E731
    params = jax.tree.map(lambda x: (rng.normal(0, 1, x.shape) / np.sqrt(fan_in(x.shape)))
                          .astype(np.float32), params)
    batch_stats = jax.tree.map(lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32),
                               batch_stats)
    return nnx.merge(graphdef, params, batch_stats)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A converted-layout checkpoint of efficientnetv2-b0 (random weights, 1000 classes)."""
    model = random_model("efficientnetv2-b0", 1)
    directory = tmp_path_factory.mktemp("converted")
    write_model(model, str(directory), model_name="efficientnetv2-b0", source="test")
    return directory, model


@jax.jit
def _train_state(params, batch_stats):
    # An EMA that differs from the weights (but keeps the outputs in a sensible range).
    state = create_train_state(params, batch_stats, optax.sgd(0.1, momentum=0.9))
    return state.replace(step=state.step + 7,
                         ema_params=jax.tree.map(lambda x: 0.9 * x, params),
                         ema_batch_stats=jax.tree.map(lambda x: x + 0.1, batch_stats))


def _trained_state(seed):
    model = random_model("efficientnetv2-b0", seed, num_classes=10, **TINY)
    _, params, batch_stats = split_model(model)
    return _train_state(params, batch_stats)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A training-layout workdir with steps 7 and 9, saved from 4 devices."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    workdir = tmp_path_factory.mktemp("trained")
    checkpointer = Checkpointer(str(workdir / "checkpoints"), keep_best=0, async_save=False)
    states = {}
    for step, seed in ((7, 2), (9, 3)):
        states[step] = jax.device_put(_trained_state(seed), replicated)
        preprocessing = {"mean": [128.0] * 3, "std": [128.0] * 3, "interpolation": "bilinear",
                         "crop_padding": 32, "squash_min_size": 48, "train_crop": None}
        checkpointer.save(step, states[step], {
            "model": "efficientnetv2-b0", "num_classes": 10,
            "model_overrides": {"block_strings": list(TINY["block_strings"]), "feature_size": 32},
            "train_size": 32, "eval_size": 40, "preprocessing": preprocessing,
            "class_names": DIGITS, "config": "{}", "step": step})
    checkpointer.close()
    return workdir, states


def _leaves(tree):
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_model_has(model, params, batch_stats):
    _, p, s = nnx.split(model, nnx.Param, nnx.BatchStat)
    for got, want in ((nnx.to_pure_dict(p), params), (nnx.to_pure_dict(s), batch_stats)):
        got, want = _leaves(got), _leaves(want)
        assert got.keys() == want.keys()
        for k in got:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_load_converted_checkpoint(converted):
    directory, model = converted
    loaded = inference.load_checkpoint(str(directory))
    _, params, batch_stats = split_model(model)
    _assert_model_has(loaded.model, params, batch_stats)
    assert (loaded.step, loaded.eval_size, loaded.weights) == (0, 224, "ema")
    assert loaded.preprocess.interpolation == "bicubic" and loaded.preprocess.crop == "legacy"
    assert loaded.class_names[1] == "goldfish, Carassius auratus"
    assert loaded.metadata["source"] == "test"


def test_load_trained_multi_device_checkpoint(trained):
    workdir, states = trained
    assert jax.device_count() == 4  # tests/conftest.py: saved from a real 4-device mesh
    loaded = inference.load_checkpoint(str(workdir))  # newest step, EMA weights
    assert loaded.step == 9 and loaded.weights == "ema"
    _assert_model_has(loaded.model, states[9].ema_params, states[9].ema_batch_stats)
    kernel = loaded.model.head_conv.kernel[...]
    assert kernel.shape == (1, 1, 16, 32)  # the architecture overrides were applied
    assert kernel.sharding.device_set == {jax.devices("cpu")[0]}
    assert loaded.class_names == tuple(DIGITS)

    raw = inference.load_checkpoint(str(workdir / "checkpoints"), step=7, use_ema=False)
    _assert_model_has(raw.model, states[7].params, states[7].batch_stats)
    step_dir = inference.load_checkpoint(str(workdir / "checkpoints" / "7"))
    assert step_dir.step == 7


def test_missing_checkpoint_is_named(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        inference.load_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no step 8 .*steps: \[7, 9\]"):
        inference.load_checkpoint(str(trained[0]), step=8)


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_predict_squash_and_center_crop(trained):
    """Eval preprocessing per metadata: at size >= squash_min_size (48) the whole image is
    resized; below, a centre square of side size/(size+32) * short side is cropped first;
    bilinear resize; (x - 128) / 128. Checked against a direct TF computation."""
    loaded = inference.load_checkpoint(str(trained[0]))
    image = skimage.data.chelsea()  # 300 x 451

    def normalised(region, size):
        return (tf.image.resize(region, [size, size], method="bilinear").numpy() - 128.0) / 128.0

    for size in (64, 32):
        side = int(size / (size + 32) * 300)
        top, left = (300 - side) // 2, (451 - side) // 2
        squashed = normalised(image, size)
        cropped = normalised(image[top:top + side, left:left + side], size)
        want, other = (squashed, cropped) if size >= 48 else (cropped, squashed)
        x = inference.preprocess_images([image], loaded.preprocess, size)[0]
        np.testing.assert_allclose(x, want, atol=1e-5)
        assert np.abs(x - other).max() > 0.1

        result = inference.predict(loaded, [image], top_k=10, image_size=size)
        probs = _softmax(np.asarray(loaded.model(want[None]), np.float64))[0]
        predicted = np.zeros(10)
        predicted[result.indices[0]] = result.probabilities[0]
        np.testing.assert_allclose(predicted, probs, rtol=1e-4, atol=1e-6)
        assert result.names[0] == [DIGITS[i] for i in result.indices[0]]


def test_predict_inputs_and_top_k(trained, tmp_path):
    loaded = inference.load_checkpoint(str(trained[0]))
    rgb = skimage.data.coffee()                      # 400 x 600 x 3
    grey = skimage.data.camera()[:100, :150]         # 2-D
    rgba = np.dstack([rgb[:80, :90], np.full((80, 90), 255, np.uint8)])
    Image.fromarray(rgb).save(tmp_path / "coffee.png")
    result = inference.predict(loaded, [str(tmp_path / "coffee.png"), rgb, grey, rgba],
                               top_k=20)
    assert result.indices.shape == (4, 10)           # top_k is capped at the class count
    np.testing.assert_array_equal(result.indices[0], result.indices[1])  # path == array
    assert np.all(np.diff(result.probabilities, axis=1) <= 0)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-5)
    batch = np.stack([rgb[:64, :64], rgb[100:164, 100:164]])
    assert inference.predict(loaded, batch, top_k=2).indices.shape == (2, 2)
    assert inference.predict(loaded, rgb, top_k=1).indices.shape == (1, 1)


def test_predict_with_a_bare_model_takes_the_variants_preprocessing(converted):
    _, model = converted
    with pytest.raises(ValueError, match="variant="):
        inference.predict(model, [skimage.data.coffee()])
    result = inference.predict(model, [skimage.data.coffee()], top_k=2, image_size=64,
                               variant="efficientnetv2-b0")
    assert len(result.names[0]) == 2 and result.names[0][0] in inference.imagenet_class_names()


def test_predict_cli(trained, tmp_path, capfd):
    """Every bad path or file gets exactly one line on stderr (capfd: also what libjpeg and
    TensorFlow would write to the file descriptor), and the good images are still classified."""
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.jpg")
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.png")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cat.jpg").read_bytes()[:200])
    paths = [tmp_path / n for n in ("cat.jpg", "missing.jpg", "notes.jpg", "cut.jpg",
                                    "coffee.png")]
    rc = predict_main(["--checkpoint", str(trained[0]), *map(str, paths), "--top-k", "2"])
    out, err = capfd.readouterr()
    assert rc == 1
    errors = err.strip().splitlines()
    assert len(errors) == 3, err
    assert errors[0] == f"error: {paths[1]}: no such file"
    assert errors[1] == (f"error: {paths[2]}: not a readable image (JPEG, PNG, GIF, BMP or "
                         f"WebP): unknown file format")
    assert errors[2].startswith(f"error: {paths[3]}: not a readable image")
    lines = out.strip().splitlines()
    assert lines[0] == "efficientnetv2-b0, step 9, ema weights, 40 px"
    assert lines[1].split() == ["image", "rank", "class", "name", "probability"]
    assert len(lines) == 2 + 2 * 2  # two images, two classes each
    assert lines[2].startswith(str(paths[0])) and lines[4].startswith(str(paths[4]))

    assert predict_main(["--checkpoint", str(tmp_path), str(paths[0])]) == 2
    assert "error: cannot load checkpoint" in capfd.readouterr().err


def test_format_table_truncates_long_names():
    predictions = inference.Predictions(np.array([[2]]), [["x" * 80]], np.array([[0.5]]))
    row = format_table(["a.jpg"], predictions).splitlines()[1]
    assert "x" * 45 + "..." in row and "x" * 46 not in row


def test_predict_is_the_function_and_the_command_keeps_its_name(trained, tmp_path):
    """`effnetv2_jax.predict(...)` is `inference.predict`; `python -m effnetv2_jax.predict` runs
    effnetv2_jax/predict_cli.py; importing `effnetv2_jax.predict` as a module refuses (it would
    rebind the package's function to a module) and leaves the function in place."""
    with pytest.raises(ImportError, match="effnetv2_jax.predict_cli"):
        importlib.import_module("effnetv2_jax.predict")
    assert effnetv2_jax.predict is inference.predict
    from effnetv2_jax import predict

    loaded = inference.load_checkpoint(str(trained[0]))
    assert predict(loaded, [skimage.data.coffee()], top_k=1).names[0][0] in DIGITS
    # the command runs predict_cli.main: reads the image, then reports the missing checkpoint
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.png")
    run = subprocess.run([sys.executable, "-m", "effnetv2_jax.predict", "--checkpoint",
                          str(tmp_path / "missing"), str(tmp_path / "coffee.png")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 2 and "error: cannot load checkpoint" in run.stderr, run.stderr


def test_package_exports():
    assert effnetv2_jax.load_checkpoint is inference.load_checkpoint
    assert effnetv2_jax.predict is inference.predict


def test_imagenet_class_names():
    names = inference.imagenet_class_names()
    # WordNet lemmas are unique but for "crane" (the bird n02012849, the machine n03126707).
    assert len(names) == 1000 and len(set(names)) == 999
    assert names[0] == "tench, Tinca tinca" and names[999].startswith("toilet tissue")
    assert inference.default_class_names(3) == ("class_0", "class_1", "class_2")


@pytest.mark.slow  # executes a notebook in a kernel, twice
@pytest.mark.parametrize("hub", ["cached", "offline"])
def test_inference_notebook_runs(tmp_path, hub):
    """Executes notebooks/inference.ipynb end to end with the Hub offline: with a local Hub
    cache holding the pretrained file (random weights timm wrote) it loads those; without, it
    says why and falls back to a randomly initialised checkpoint it writes itself."""
    import nbclient
    import nbformat

    notebook = nbformat.read(REPO / "notebooks" / "inference.ipynb", as_version=4)
    env = {k: v for k, v in os.environ.items()
           if k != "EFFNETV2_CHECKPOINT" and not k.startswith(("HF_", "HUGGINGFACE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(EFFNETV2_NOTEBOOK_TMP=str(tmp_path), HF_HOME=str(tmp_path / "hf"),
               HF_HUB_OFFLINE="1", EFFNETV2_JAX_CACHE=str(tmp_path / "converted"),
               EFFNETV2_PRETRAINED="efficientnetv2-b0/in1k")
    if hub == "cached":
        from hub_cache import add_to_hub_cache

        add_to_hub_cache(tmp_path / "hf" / "hub", "timm/tf_efficientnetv2_b0.in1k",
                         "tf_efficientnetv2_b0")
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    text = "\n".join(output.get("text", "") for cell in notebook.cells
                     for output in cell.get("outputs", []))
    assert "top-5" in text and "parameters" in text
    if hub == "cached":
        assert "pretrained efficientnetv2-b0 'in1k'" in text and "from hf://timm/" in text
        assert os.listdir(tmp_path / "converted" / "pretrained" / "efficientnetv2-b0")
    else:
        assert "No pretrained weights" in text and "HF_HUB_OFFLINE" in text
        assert "randomly initialised efficientnetv2-b0" in text
    images = [o for cell in notebook.cells for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the notebook shows its images and bar charts"
