"""TF1 name-based checkpoints: written with a TF1 `Saver` under the official variable names
(values from a random timm model, through the timm and tf1 mappings; EMA copies, optimizer slots
and `global_step` included), converted, and compared with the timm model."""

import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from convert_helpers import assert_parity, inputs, our_outputs, timm_reference
from effnetv2_jax.convert import ConversionError, convert, layout, tf1
from effnetv2_jax.convert import timm as timm_convert
from effnetv2_jax.models.arch import resolve_arch
from effnetv2_jax.models.variants import get_variant

TF1_CASES = [("tf_efficientnetv2_b0", "efficientnetv2-b0"),   # fused e=1, fused e=4, MBConv+SE
             ("tf_efficientnet_b0", "efficientnet-b0"),       # MBConv e=1 (no expand conv)
             ("tf_efficientnet_lite0", "efficientnet-lite0")]  # no SE, relu6


def _layers(model_name):
    resolved = resolve_arch(get_variant(model_name).arch)
    return resolved, layout.model_layers(resolved)


def our_leaves_from_timm(timm_name, model_name) -> dict[str, np.ndarray]:
    """The random timm model's weights as our leaves (`blocks.3.expand_conv.kernel` -> array)."""
    state = timm_reference(timm_name, model_name).state
    resolved, layers = _layers(model_name)
    mapping = timm_convert.state_dict_names(layers, resolved)
    return {leaf: source.transform(state[source.name]) for leaf, source in mapping.items()}


def write_tf1_checkpoint(prefix: str, model_name: str, leaves: dict[str, np.ndarray]) -> str:
    """A TF1 Saver checkpoint with the official names: the EMA copies hold `leaves`; the raw
    variables hold different values (so reading them by mistake shows); the stem's RMSProp slots
    and `global_step` are there too (slots are ignored by name, so a few show it)."""
    _, layers = _layers(model_name)
    rng = np.random.RandomState(7)
    graph, feeds = tf.Graph(), {}

    def variable(name, value):  # initialised through a feed: no graph-sized constants
        placeholder = tf.compat.v1.placeholder(tf.float32, value.shape)
        feeds[placeholder] = value
        tf.compat.v1.Variable(placeholder, name=name)

    with graph.as_default():
        for leaf, (name, depthwise) in tf1.variable_names(layers, model_name).items():
            value = leaves[leaf].transpose(0, 1, 3, 2) if depthwise else leaves[leaf]
            variable(name + tf1.EMA_SUFFIX, value)
            variable(name, value + rng.normal(0, 1, value.shape).astype(np.float32))
            if leaf.startswith("stem_"):
                for slot in ("/RMSProp", "/RMSProp_1"):
                    variable(name + slot, np.ones_like(value))
        tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer(), feed_dict=feeds)
            return saver.save(session, prefix)


@pytest.fixture(scope="module")
def tf1_checkpoint(tmp_path_factory):
    """(timm name, model name) -> the prefix of its TF1 checkpoint, written once per module."""
    prefixes = {}

    def get(timm_name, model_name):
        if model_name not in prefixes:
            directory = tmp_path_factory.mktemp("tf1") / model_name
            prefixes[model_name] = write_tf1_checkpoint(
                str(directory / "model.ckpt"), model_name,
                our_leaves_from_timm(timm_name, model_name))
        return prefixes[model_name]
    return get


@pytest.mark.parametrize("timm_name,model_name", [  # B0 in the slow set: its parts are in the others
    pytest.param(*case, marks=pytest.mark.slow) if case[1] == "efficientnet-b0" else case
    for case in TF1_CASES])
def test_tf1_checkpoint_parity(tmp_path, tf1_checkpoint, timm_name, model_name):
    from effnetv2_jax.inference import load_checkpoint

    prefix = tf1_checkpoint(timm_name, model_name)
    # The directory (with its `checkpoint` state file), as the official archives unpack.
    report = convert("tf1", model_name, os.path.dirname(prefix), str(tmp_path / "out"))
    assert report.metadata["source_weights"] == "ema"
    assert report.metadata["source_files"][0] == "model.ckpt.index"
    loaded = load_checkpoint(str(tmp_path / "out"), conv_impl="xla")
    assert_parity(our_outputs(loaded.model, inputs()),
                  timm_reference(timm_name, model_name).outputs, f"tf1 -> {model_name}")


def test_tf1_archive_and_raw_weights_on_request(tmp_path, tf1_checkpoint):
    from effnetv2_jax.inference import load_checkpoint

    prefix = tf1_checkpoint(*TF1_CASES[2])
    with tarfile.open(tmp_path / "efficientnet-lite0.tar.gz", "w:gz") as tar:
        tar.add(os.path.dirname(prefix), arcname="efficientnet-lite0")
    archive = str(tmp_path / "efficientnet-lite0.tar.gz")
    report = convert("tf1", "efficientnet-lite0", archive, str(tmp_path / "out"), use_ema=False)
    assert report.metadata["source_weights"] == "raw"
    assert report.metadata["source_files"] == ["efficientnet-lite0.tar.gz"]
    kernel = np.asarray(load_checkpoint(str(tmp_path / "out")).model.head_conv.kernel[...])
    raw = tf.train.load_checkpoint(prefix).get_tensor("efficientnet-lite0/head/conv2d/kernel")
    np.testing.assert_array_equal(kernel, raw)
    ema = our_leaves_from_timm(*TF1_CASES[2])["head_conv.kernel"]
    assert not np.array_equal(kernel, ema)


def test_variable_names_follow_the_official_scheme():
    """Names from the official code's layer scopes (`effnetv2_model.py`; and the automl#1012 error message), written out by
    hand, not derived from the converter."""
    _, layers = _layers("efficientnet-b0")
    p = "efficientnet-b0"
    names = {leaf: name for leaf, (name, _) in tf1.variable_names(layers, p).items()}
    assert names["stem_conv.kernel"] == f"{p}/stem/conv2d/kernel"
    assert names["stem_bn.scale"] == f"{p}/stem/tpu_batch_normalization/gamma"
    # Block 0 is MBConv with expand ratio 1: no expand conv, so the projection is `conv2d`.
    assert names["blocks.0.depthwise_conv.kernel"] == \
        f"{p}/blocks_0/depthwise_conv2d/depthwise_kernel"
    assert names["blocks.0.depthwise_bn.mean"] == \
        f"{p}/blocks_0/tpu_batch_normalization/moving_mean"
    assert names["blocks.0.se.reduce.kernel"] == f"{p}/blocks_0/se/conv2d/kernel"
    assert names["blocks.0.se.expand.bias"] == f"{p}/blocks_0/se/conv2d_1/bias"
    assert names["blocks.0.project_conv.kernel"] == f"{p}/blocks_0/conv2d/kernel"
    assert names["blocks.0.project_bn.var"] == \
        f"{p}/blocks_0/tpu_batch_normalization_1/moving_variance"
    # Block 1 expands: conv2d, bn, depthwise, bn_1, se, conv2d_1, bn_2.
    assert names["blocks.1.expand_conv.kernel"] == f"{p}/blocks_1/conv2d/kernel"
    assert names["blocks.1.depthwise_bn.bias"] == f"{p}/blocks_1/tpu_batch_normalization_1/beta"
    assert names["blocks.1.project_conv.kernel"] == f"{p}/blocks_1/conv2d_1/kernel"
    assert names["blocks.1.project_bn.scale"] == f"{p}/blocks_1/tpu_batch_normalization_2/gamma"
    assert names["blocks.15.project_conv.kernel"] == f"{p}/blocks_15/conv2d_1/kernel"
    assert names["head_conv.kernel"] == f"{p}/head/conv2d/kernel"
    assert names["head_bn.var"] == f"{p}/head/tpu_batch_normalization/moving_variance"
    assert names["classifier.kernel"] == f"{p}/head/dense/kernel"

    _, layers = _layers("efficientnetv2-b0")
    p = "efficientnetv2-b0"
    names = {leaf: n for leaf, (n, _) in tf1.variable_names(layers, p).items()}
    assert names["blocks.0.fused_bn.mean"] == f"{p}/blocks_0/tpu_batch_normalization/moving_mean"
    assert names["blocks.0.fused_conv.kernel"] == f"{p}/blocks_0/conv2d/kernel"
    assert "blocks.0.project_conv.kernel" not in names
    assert names["blocks.1.fused_conv.kernel"] == f"{p}/blocks_1/conv2d/kernel"
    assert names["blocks.1.project_conv.kernel"] == f"{p}/blocks_1/conv2d_1/kernel"
    assert names["blocks.1.project_bn.scale"] == f"{p}/blocks_1/tpu_batch_normalization_1/gamma"


def test_tf1_wrong_model_prefix_names_the_scopes_found(tmp_path, tf1_checkpoint):
    prefix = tf1_checkpoint(*TF1_CASES[2])
    with pytest.raises(ConversionError, match=r"no variables under 'efficientnet-b0/'.*"
                                              r"efficientnet-lite0"):
        convert("tf1", "efficientnet-b0", prefix, str(tmp_path / "out"))
