"""MBConv's fused inference kernel (`kernels.mbconv_depthwise_inference`): it equals XLA's
BN + activation, depthwise conv, BN + activation and squeeze-excite for every stride, kernel
size, activation and odd or even size; its exp is accurate over the whole float range; bad
shapes fail naming the kernel; the model uses it exactly at inference with the CPU ops and an
activation it has, and gives the same logits as without it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import effnetv2_jax
from effnetv2_jax.cpu import kernels
from effnetv2_jax.models import conv_ops
from effnetv2_jax.models.layers import get_activation


def _random(shape, seed, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def _reference(u, in_scale, in_shift, kernel, out_shift, stride, act_in, act_out,
               squeeze_excite=None):
    a = u * in_scale + in_shift
    a = get_activation(act_in)(a) if act_in else a
    y = conv_ops.depthwise_conv2d(a, kernel[:, :, None, :], stride) + out_shift
    y = get_activation(act_out)(y) if act_out else y
    if squeeze_excite is None:
        return y
    reduce, reduce_bias, expand, expand_bias, act = squeeze_excite
    squeezed = jnp.mean(y, axis=(1, 2)) @ reduce + reduce_bias
    squeezed = get_activation(act)(squeezed) if act else squeezed
    return y * jax.nn.sigmoid(squeezed @ expand + expand_bias)[:, None, None, :]


def _squeeze_excite(c, s, act, seed):
    return (_random((c, s), seed, -0.5, 0.5), _random((s,), seed + 1),
            _random((s, c), seed + 2, -0.5, 0.5), _random((c,), seed + 3), act)


@pytest.mark.parametrize("hw, k, stride, act_in, act_out, se_act", [
    ((8, 8), 3, 1, "silu", "silu", None), ((7, 9), 3, 2, "silu", "silu", "silu"),
    ((10, 10), 3, 2, None, "relu6", "relu6"), ((9, 6), 5, 1, "relu", None, None),
    ((11, 11), 5, 2, "swish", "relu", "relu"), ((1, 1), 3, 1, "silu", "silu", "silu"),
    ((5, 5), 3, 1, "silu", "silu", "no activation")])
def test_equals_the_xla_ops(hw, k, stride, act_in, act_out, se_act):
    assert kernels.available(), "g++ and jaxlib's FFI headers are on every supported CPU host"
    c = 24
    args = (_random((3, *hw, c), 0, -4, 4), _random((c,), 1, 0.5, 1.5), _random((c,), 2),
            _random((k, k, c), 3), _random((c,), 4))
    squeeze_excite = (None if se_act is None else
                      _squeeze_excite(c, 6, None if se_act == "no activation" else se_act, 5))
    got = jax.jit(lambda *a: kernels.mbconv_depthwise_inference(
        *a, stride, act_in, act_out, squeeze_excite))(*args)
    want = jax.jit(lambda *a: _reference(*a, stride, act_in, act_out, squeeze_excite))(*args)
    assert got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(want))) > 0.5  # not trivially zero
    if squeeze_excite is not None:  # the gate is not trivially 1: y without it differs
        ungated = _reference(*args, stride, act_in, act_out)
        assert float(jnp.max(jnp.abs(ungated - want))) > 0.05


def test_silu_over_the_whole_float_range():
    # A 1x1 identity kernel leaves y = silu(u): the kernel's own exp, against jax's.
    u = np.concatenate([np.linspace(-100, 100, 20001, dtype=np.float32),
                        np.float32([-1e30, -88.5, -87.5, 87.5, 88.5, 1e30, 0.0, -0.0])])
    u = u.reshape(1, 1, -1, 1)
    y = jax.jit(lambda u: kernels.mbconv_depthwise_inference(
        u, np.ones(1), np.zeros(1), np.ones((1, 1, 1)), np.zeros(1), 1, "silu", None))(u)
    want = np.asarray(jax.nn.silu(u), np.float64)
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=1e-30)
    assert np.all(np.isfinite(y)) and y[0, 0, -3, 0] == 1e30
    nan = jax.jit(lambda u: kernels.mbconv_depthwise_inference(
        u, np.ones(1), np.zeros(1), np.ones((1, 1, 1)), np.zeros(1), 1, "silu", None))(
            np.float32([np.nan, 1.0]).reshape(1, 1, 2, 1))
    assert np.isnan(nan[0, 0, 0, 0]) and np.isfinite(nan[0, 0, 1, 0])


def test_the_squeeze_excite_gate_saturates_without_overflow():
    # Gate pre-activations of +-1e4: sigmoid is exactly 1 or 0 there, never NaN or inf.
    c = 4
    u = np.ones((1, 2, 2, c), np.float32)
    squeeze_excite = (np.ones((c, 1), np.float32), np.zeros(1, np.float32),
                      np.float32([[1e4, -1e4, 1e4, -1e4]]), np.zeros(c, np.float32), None)
    y = jax.jit(lambda u: kernels.mbconv_depthwise_inference(
        u, np.ones(c), np.zeros(c), np.ones((1, 1, c)), np.zeros(c), 1, None, None,
        squeeze_excite))(u)
    np.testing.assert_array_equal(y[0, 0, 0], [1.0, 0.0, 1.0, 0.0])


def test_a_mismatched_shape_is_an_error_that_names_the_kernel():
    with pytest.raises(Exception, match="effnetv2_mbconv_depthwise_inference: shapes"):
        jax.jit(lambda: kernels.mbconv_depthwise_inference(
            jnp.zeros((1, 4, 4, 3)), jnp.ones(3), jnp.zeros(3), jnp.ones((3, 3, 3)),
            jnp.zeros(5), 1, "silu", "silu"))()  # out_shift has 5 channels, not 3
    squeeze_excite = (jnp.ones((3, 2)), jnp.zeros(2), jnp.ones((2, 4)), jnp.zeros(4), "silu")
    with pytest.raises(Exception, match="effnetv2_mbconv_depthwise_se_inference: squeeze-ex"):
        jax.jit(lambda: kernels.mbconv_depthwise_inference(
            jnp.zeros((1, 4, 4, 3)), jnp.ones(3), jnp.zeros(3), jnp.ones((3, 3, 3)),
            jnp.zeros(3), 1, "silu", "silu", squeeze_excite))()  # expand: 4 channels, not 3


def _model(activation):
    model = effnetv2_jax.create_model(
        "efficientnetv2-s", num_classes=5, feature_size=48, activation=activation,
        block_strings=("r1_k3_s1_e1_i16_o16_se0.25", "r1_k3_s2_e4_i16_o24_se0.25",
                       "r1_k5_s1_e6_i24_o24"))
    graph, state = nnx.split(model)
    leaves, tree = jax.tree.flatten(state)
    rng = np.random.default_rng(0)  # BN statistics and biases away from their initial values
    state = jax.tree.unflatten(tree, [
        leaf + rng.uniform(-0.3, 0.3, leaf.shape).astype(np.float32) if leaf.ndim == 1 else leaf
        for leaf in leaves])
    return graph, state


@pytest.mark.parametrize("activation, fused", [
    ("silu", True),
    pytest.param("relu6", True, marks=pytest.mark.slow),    # each compiles a model: one is fast
    pytest.param("gelu", False, marks=pytest.mark.slow)])
def test_the_model_uses_it_at_inference_with_the_same_logits(monkeypatch, activation, fused):
    # conftest's 4 devices switch the kernels off; one unsharded array is safe to run them on.
    # available() builds and registers them, whichever tests ran before in this process.
    if not kernels.available():
        pytest.skip("the C++ kernels cannot be built here")
    graph, state = _model(activation)
    images = jax.random.normal(jax.random.key(0), (3, 21, 21, 3))
    monkeypatch.setattr(kernels, "enabled", lambda: True)
    infer = jax.jit(lambda s, x: nnx.merge(graph, s)(x, train=False))
    text = infer.lower(state, images).as_text()
    # Two blocks with squeeze-excite, one without.
    assert text.count(kernels.MBCONV_DEPTHWISE_SE_INFERENCE) == (2 if fused else 0)
    assert text.count(kernels.MBCONV_DEPTHWISE_INFERENCE) == (1 if fused else 0)
    train = jax.jit(lambda s, x: nnx.merge(graph, s)(x, train=True, key=jax.random.key(1)))
    train_text = train.lower(state, images).as_text()
    assert "effnetv2_mbconv_depthwise" not in train_text
    logits = infer(state, images)
    monkeypatch.setattr(kernels, "enabled", lambda: False)
    want = jax.jit(lambda s, x: nnx.merge(graph, s)(x, train=False))(state, images)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
