"""Keras applications -> checkpoint parity: `weights=None` models (random weights, calibrated BN
statistics), saved as Keras 3 `.weights.h5`, legacy `.h5` and `.keras`, converted and compared.

Keras runs on its TensorFlow backend here (models build in seconds; the JAX backend takes ~30 s
each). V2 models are built with `include_preprocessing=False`; V1 models always contain
`Rescaling(1/255)` + `Normalization` (identity with `weights=None`), so Keras gets `255 * x`
where our model gets `x`.
"""

import functools
import os

os.environ["KERAS_BACKEND"] = "tensorflow"  # before keras is imported

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

from convert_helpers import (INPUT_SHAPE, assert_parity, endpoint_positions, inputs,  # noqa: E402
                             our_outputs)
from effnetv2_jax.convert import ConversionError, convert  # noqa: E402
from effnetv2_jax.convert.pipeline import flatten  # noqa: E402
from effnetv2_jax.inference import load_checkpoint  # noqa: E402

# The full-size V2-S and B3 parity runs are slow (Keras builds and runs the reference model).
KERAS_CASES = [pytest.param("EfficientNetV2S", "efficientnetv2-s", marks=pytest.mark.slow),
               ("EfficientNetV2B0", "efficientnetv2-b0"),
               pytest.param("EfficientNetB0", "efficientnet-b0", marks=pytest.mark.slow),
               pytest.param("EfficientNetB3", "efficientnet-b3",    # the V1 filter-rounding trap
                            marks=pytest.mark.slow)]


def _is_v1(app: str) -> bool:
    return not app.startswith("EfficientNetV2")


@functools.cache
def keras_reference(app: str, model_name: str):
    """(model, outputs on `inputs()`): random weights, random BN scale/offset and biases, BN
    statistics measured on a random batch of 32 (dropout off while measuring)."""
    keras.utils.set_random_seed(0)
    kwargs = {} if _is_v1(app) else {"include_preprocessing": False}
    model = getattr(keras.applications, app)(weights=None, input_shape=INPUT_SHAPE[1:],
                                             classifier_activation=None, **kwargs)
    rng = np.random.RandomState(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               mean, var])
            layer.momentum = 0.0  # one training call sets the moving statistics
        elif isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.2, bias.shape)])
    scale = 255.0 if _is_v1(app) else 1.0
    calibration = np.random.RandomState(1).uniform(-2, 2, (32,) + INPUT_SHAPE[1:])
    model(calibration.astype(np.float32) * scale, training=True)

    names = {"stem": "stem_activation", "head": "top_activation", "pooled": "avg_pool",
             "logits": "predictions"}
    for endpoint, (stage, j) in endpoint_positions(model_name).items():
        prefix = f"block{stage + 1}{chr(ord('a') + j)}_"
        names[endpoint] = [layer.name for layer in model.layers
                           if layer.name.startswith(prefix)][-1]
    features = keras.Model(model.inputs, [model.get_layer(n).output for n in names.values()])
    values = features([inputs() * scale], training=False)
    return model, {k: keras.ops.convert_to_numpy(v) for k, v in zip(names, values)}


@pytest.mark.parametrize("app,model_name", KERAS_CASES)
def test_keras_weights_h5_parity(tmp_path, app, model_name):
    model, outputs = keras_reference(app, model_name)
    model.save_weights(str(tmp_path / "model.weights.h5"))
    report = convert("keras", model_name, str(tmp_path / "model.weights.h5"),
                     str(tmp_path / "out"))
    assert report.metadata["source_layout"] == "keras 3 (by position)"
    loaded = load_checkpoint(str(tmp_path / "out"), conv_impl="xla")
    assert_parity(our_outputs(loaded.model, inputs()), outputs, f"keras {app} -> {model_name}")


def _leaves(path):
    loaded = load_checkpoint(path)
    from flax import nnx

    _, params, stats = nnx.split(loaded.model, nnx.Param, nnx.BatchStat)
    return {k: np.asarray(v) for k, v in flatten({**nnx.to_pure_dict(params),
                                                   **nnx.to_pure_dict(stats)}).items()}


@pytest.mark.parametrize("app,model_name", [("EfficientNetV2B0", "efficientnetv2-b0"),
                                            ("EfficientNetB0", "efficientnet-b0")])
def test_keras_legacy_h5_and_keras_archive_give_the_same_weights(tmp_path, app, model_name):
    """The by-name layout (the `weights="imagenet"` downloads) and a `.keras` archive convert to
    exactly the weights the positional `.weights.h5` gives (whose parity is tested above)."""
    model, _ = keras_reference(app, model_name)
    model.save_weights(str(tmp_path / "model.weights.h5"))
    with h5py.File(tmp_path / "legacy.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    files = ["model.weights.h5", "legacy.h5"]
    if not _is_v1(app):  # the archive holds the same positional file: one case shows it
        model.save(str(tmp_path / "model.keras"))
        files.append("model.keras")
    reference = None
    for name in files:
        report = convert("keras", model_name, str(tmp_path / name), str(tmp_path / f"out_{name}"))
        leaves = _leaves(report.checkpoint)
        if reference is None:
            reference = leaves
            continue
        assert report.metadata["source_layout"] == (
            "legacy h5 (by name)" if name == "legacy.h5" else "keras 3 (by position)")
        assert leaves.keys() == reference.keys()
        for k in leaves:
            np.testing.assert_array_equal(leaves[k], reference[k], err_msg=f"{name}: {k}")


def test_keras_file_of_another_model_lists_the_mismatches(tmp_path):
    model, _ = keras_reference("EfficientNetB0", "efficientnet-b0")
    with h5py.File(tmp_path / "legacy.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    with pytest.raises(ConversionError) as info:
        convert("keras", "efficientnet-b3", str(tmp_path / "legacy.h5"), str(tmp_path / "out"))
    error = info.value
    assert "block1b_dwconv/kernel" in error.missing       # B3 has 2 blocks in stage 1
    assert any(name == "stem_conv/kernel" for name, *_ in error.wrong_shape)  # 32 vs 40 channels
    assert "stem_conv/kernel: [3, 3, 3, 32] -> [3, 3, 3, 40]" in str(error)


def test_keras_has_no_lite_models(tmp_path):
    model, _ = keras_reference("EfficientNetB0", "efficientnet-b0")
    model.save_weights(str(tmp_path / "model.weights.h5"))
    with pytest.raises(ValueError, match="Keras applications have no 'efficientnet-lite'"):
        convert("keras", "efficientnet-lite0", str(tmp_path / "model.weights.h5"),
                str(tmp_path / "out"))
