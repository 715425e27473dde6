"""The network's behaviour: shapes, endpoints, train vs eval, stochastic depth, dtypes, overrides."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import effnetv2_jax
from effnetv2_jax.models import ops
from effnetv2_jax.models.arch import ACTIVATION_NAMES, resolve_arch
from effnetv2_jax.models.layers import ACTIVATIONS, BatchNorm, drop_path

# One block per stage except the last, covering Fused e1 (residual), Fused e4, MBConv + SE and an
# MBConv residual; 32-64 px keeps every compile to a few seconds.
TINY = ("r1_k3_s1_e1_i16_o16_c1", "r1_k3_s2_e4_i16_o24_c1", "r1_k3_s2_e4_i24_o32_se0.25",
        "r2_k3_s2_e4_i32_o48_se0.25")
TINY_ARGS = dict(block_strings=TINY, feature_size=64, num_classes=7)


def tiny(**kwargs):
    return effnetv2_jax.create_model("efficientnetv2-s", **{**TINY_ARGS, **kwargs})


def jitted(model, method="__call__", **call_kwargs):
    """A jitted pure function (state, images) -> (output, new state) for `model.<method>`."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, images, key=None):
        m = nnx.merge(graphdef, state)
        out = getattr(m, method)(images, key=key, **call_kwargs)
        return out, nnx.state(m)

    return run, state


def images(shape=(2, 32, 32, 3), seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("height, width", [(32, 32), (33, 33), (47, 40), (64, 63)])
def test_logit_and_endpoint_shapes_at_odd_and_even_sizes(height, width):
    model = tiny()
    run, state = jitted(model, "extract_endpoints")
    endpoints, _ = run(state, images((2, height, width, 3)))
    # reduction_i sits at stride 2**i: ceil(size / 2**i) with TF "SAME" padding.
    for i in range(1, 5):
        assert endpoints[f"reduction_{i}"].shape[1:3] == (math.ceil(height / 2 ** i),
                                                          math.ceil(width / 2 ** i))
    assert endpoints["stem"].shape == (2, math.ceil(height / 2), math.ceil(width / 2), 16)
    assert endpoints["reduction_4"].shape[-1] == 48
    assert endpoints["pooled"].shape == (2, 64)
    logits, _ = jitted(model)[0](state, images((2, height, width, 3)))
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_official_variant_endpoints_are_at_strides_2_to_32():
    model = effnetv2_jax.abstract_model("efficientnetv2-s", num_classes=10)
    endpoints = nnx.eval_shape(lambda m, x: m.extract_endpoints(x), model,
                               jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    sizes = [endpoints[f"reduction_{i}"].shape[1] for i in range(1, 6)]
    assert sizes == [32, 16, 8, 4, 2]
    assert [endpoints[f"reduction_{i}"].shape[-1] for i in range(1, 6)] == [24, 48, 64, 160, 256]


def test_survival_probability_is_linear_in_the_global_block_index():
    resolved = resolve_arch(effnetv2_jax.get_variant("efficientnetv2-s").arch)
    probs = [b.survival_prob for b in resolved.blocks]
    assert probs[0] == 1.0
    assert probs[-1] == pytest.approx(1 - 0.2 * 39 / 40)
    np.testing.assert_allclose(probs, [1 - 0.2 * i / 40 for i in range(40)])
    assert all(b.survival_prob == 1.0 for b in resolve_arch(
        effnetv2_jax.get_variant("efficientnetv2-s").arch.replace(survival_prob=None)).blocks)
    # Residual only where stride 1 and in == out: V2-S stage 1 (24 -> 24) has it in every block.
    assert [b.residual for b in resolved.blocks[:3]] == [True, True, False]


def test_eval_is_deterministic_and_leaves_batch_statistics_alone():
    model = tiny()
    run, state = jitted(model)
    x = images()
    first, after = run(state, x)
    second, _ = run(after, x)
    np.testing.assert_array_equal(first, second)
    before_stats = nnx.state(model, nnx.BatchStat)
    after_stats = nnx.state(nnx.merge(nnx.graphdef(model), after), nnx.BatchStat)
    for a, b in zip(jax.tree.leaves(before_stats), jax.tree.leaves(after_stats)):
        np.testing.assert_array_equal(a, b)


def test_training_updates_running_statistics_with_keras_momentum():
    model = tiny(bn_momentum=0.9)
    x = images()
    stem = model.stem_conv(x)  # the stem BN sees exactly this
    run, state = jitted(model, train=True)
    _, new_state = run(state, x, jax.random.key(0))
    new_model = nnx.merge(nnx.graphdef(model), new_state)
    batch_mean = np.asarray(stem).mean(axis=(0, 1, 2))
    batch_var = np.asarray(stem).var(axis=(0, 1, 2))
    np.testing.assert_allclose(new_model.stem_bn.mean[...], 0.1 * batch_mean, atol=1e-5)
    np.testing.assert_allclose(new_model.stem_bn.var[...], 0.9 + 0.1 * batch_var, atol=1e-5)


def test_training_needs_a_key_and_is_random_through_it():
    model = tiny(dropout_rate=0.5)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        model(images(), train=True)
    run, state = jitted(model, train=True)
    a, _ = run(state, images(), jax.random.key(1))
    b, _ = run(state, images(), jax.random.key(1))
    c, _ = run(state, images(), jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_dropout_masks_pooled_features_only_in_training():
    kwargs = dict(include_top=False, survival_prob=None)
    with_dropout = tiny(dropout_rate=0.5, **kwargs)
    without = tiny(dropout_rate=0.0, **kwargs)  # same seed: identical parameters
    x = images((8, 32, 32, 3))
    key = jax.random.key(3)
    dropped, _ = jitted(with_dropout, train=True)[0](nnx.state(with_dropout), x, key)
    kept, _ = jitted(without, train=True)[0](nnx.state(without), x, key)
    dropped, kept = np.asarray(dropped), np.asarray(kept)
    zeroed = dropped == 0
    assert 0.3 < zeroed.mean() < 0.7
    np.testing.assert_allclose(dropped[~zeroed], 2.0 * kept[~zeroed], rtol=1e-5)
    eval_a, _ = jitted(with_dropout)[0](nnx.state(with_dropout), x)
    eval_b, _ = jitted(without)[0](nnx.state(without), x)
    np.testing.assert_allclose(eval_a, eval_b, rtol=1e-6)


def test_drop_path_keeps_or_zeroes_whole_examples():
    x = jnp.ones((4000, 3, 3, 2))
    out = np.asarray(drop_path(x, 0.8, jax.random.key(0)))
    per_example = out.reshape(4000, -1)
    assert set(np.unique(per_example)) <= {0.0, 1.25}
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))
    assert abs((per_example[:, 0] > 0).mean() - 0.8) < 0.03


def test_stochastic_depth_acts_only_in_training():
    kwargs = dict(dropout_rate=0.0)
    deep = tiny(survival_prob=0.2, **kwargs)
    none = tiny(survival_prob=None, **kwargs)
    x = images((4, 32, 32, 3))
    np.testing.assert_allclose(jitted(deep)[0](nnx.state(deep), x)[0],
                               jitted(none)[0](nnx.state(none), x)[0], rtol=1e-6)
    outputs = {np.asarray(jitted(deep, train=True)[0](nnx.state(deep), x,
                                                      jax.random.key(k))[0]).tobytes()
               for k in range(4)}
    assert len(outputs) > 1  # different keys drop different residual branches


@pytest.mark.slow  # initialises a full-size B0
def test_initialisers_follow_the_official_code():
    model = effnetv2_jax.create_model("efficientnetv2-b0", num_classes=1000)
    dw = np.asarray(model.blocks[20].depthwise_conv.kernel[...])  # [3, 3, 1, 1152]
    assert dw.shape == (3, 3, 1, 1152)
    # TF's depthwise fan_out is k*k*1: std sqrt(2/9) = 0.471, independent of the channel count.
    assert abs(dw.std() - math.sqrt(2 / 9)) < 0.01
    project = np.asarray(model.blocks[20].project_conv.kernel[...])  # [1, 1, 1152, 192]
    assert abs(project.std() - math.sqrt(2 / 192)) < 0.003
    dense = np.asarray(model.classifier.kernel[...])
    assert np.abs(dense).max() <= 1 / math.sqrt(1000)
    assert abs(dense.std() - 1 / math.sqrt(3000)) < 0.001
    np.testing.assert_array_equal(model.classifier.bias[...], 0.0)
    np.testing.assert_array_equal(model.stem_bn.scale[...], 1.0)
    np.testing.assert_array_equal(model.stem_bn.var[...], 1.0)


def test_grouped_batch_norm_matches_numpy():
    bn = BatchNorm(3, momentum=0.9, epsilon=1e-3, groups=2)
    bn.scale[...] = jnp.array([1.0, 2.0, 0.5])
    bn.bias[...] = jnp.array([0.0, 1.0, -1.0])
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 5, 5, 3)).astype(np.float32)
    y = np.asarray(bn(jnp.asarray(x), use_running_average=False))
    groups = x.reshape(2, 2, 5, 5, 3)
    mean = groups.mean(axis=(1, 2, 3), keepdims=True)
    var = groups.var(axis=(1, 2, 3), keepdims=True)
    expected = ((groups - mean) / np.sqrt(var + 1e-3) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0])
    np.testing.assert_allclose(y, expected.reshape(x.shape), atol=1e-4)
    np.testing.assert_allclose(bn.mean[...], 0.1 * mean.mean(axis=0).ravel(), atol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var.mean(axis=0).ravel(), atol=1e-4)
    eval_out = np.asarray(bn(jnp.asarray(x), use_running_average=True))
    running_mean, running_var = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    np.testing.assert_allclose(eval_out, (x - running_mean) / np.sqrt(running_var + 1e-3)
                               * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0], atol=1e-4)
    with pytest.raises(ValueError, match="does not divide"):
        BatchNorm(3, momentum=0.9, epsilon=1e-3, groups=3)(jnp.asarray(x),
                                                           use_running_average=False)


def test_bfloat16_compute_keeps_float32_parameters_and_statistics():
    f32, bf16 = tiny(), tiny(dtype="bfloat16")
    for leaf in jax.tree.leaves(nnx.state(bf16, nnx.Param)) + jax.tree.leaves(
            nnx.state(bf16, nnx.BatchStat)):
        assert leaf.dtype == jnp.float32
    x = images()
    ref, _ = jitted(f32)[0](nnx.state(f32), x)
    low, _ = jitted(bf16)[0](nnx.state(bf16), x)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, ref, atol=0.05 * float(jnp.abs(ref).max()) + 0.05)
    out, new_state = jitted(bf16, train=True)[0](nnx.state(bf16), x, jax.random.key(0))
    assert bool(jnp.all(jnp.isfinite(out)))
    trained = nnx.merge(nnx.graphdef(bf16), new_state)
    assert trained.stem_bn.mean[...].dtype == jnp.float32
    assert not np.allclose(trained.stem_bn.mean[...], 0.0)


@pytest.mark.slow  # compiles and runs training steps per conv impl
@pytest.mark.parametrize("impl", ["xla", "cpu"])
def test_a_few_sgd_steps_reduce_the_loss(impl):
    model = tiny(conv_impl=impl, dropout_rate=0.0, survival_prob=None)
    graphdef, state = nnx.split(model)
    tx = optax.sgd(0.05, momentum=0.9)
    opt_state = tx.init(nnx.state(model, nnx.Param))
    x = images((8, 32, 32, 3))
    labels = jnp.arange(8) % 7

    @jax.jit
    def step(state, opt_state):
        m = nnx.merge(graphdef, state)

        def loss_fn(m):
            logits = m(x, train=True, key=jax.random.key(0))
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        # nnx.value_and_grad differentiates the Params and carries the BN updates out.
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        params = nnx.state(m, nnx.Param)
        updates, opt_state = tx.update(grads, opt_state, params)
        nnx.update(m, optax.apply_updates(params, updates))
        return nnx.state(m), opt_state, loss

    losses = []
    for _ in range(12):
        state, opt_state, loss = step(state, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_cpu_and_xla_convolutions_give_the_same_model():
    xla, cpu = tiny(conv_impl="xla"), tiny(conv_impl="cpu")
    x = images((2, 33, 33, 3))

    def loss(model, state):
        graphdef = nnx.graphdef(model)

        def f(s):
            return jnp.sum(nnx.merge(graphdef, s)(x, train=True, key=jax.random.key(0)) ** 2)
        return jax.jit(jax.value_and_grad(f))(state)

    (value_x, grad_x), (value_c, grad_c) = loss(xla, nnx.state(xla)), loss(cpu, nnx.state(cpu))
    assert value_c == pytest.approx(float(value_x), rel=1e-4)
    for a, b in zip(jax.tree.leaves(grad_x), jax.tree.leaves(grad_c)):
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, float(np.abs(a).max())))


def test_create_model_overrides_and_errors():
    model = effnetv2_jax.abstract_model("efficientnet-b0", num_classes=5, width=0.5, depth=0.5,
                                        activation="relu", dropout_rate=0.1)
    assert model.arch.width == 0.5 and model.classifier.kernel.shape[-1] == 5
    assert model.resolved.stem_channels == 16 and model.arch.activation == "relu"
    assert tiny(block_strings=TINY[:2]).resolved.num_blocks == 2
    with pytest.raises(ValueError, match=r"unknown architecture override\(s\) \['widht'\]"):
        effnetv2_jax.create_model("efficientnet-b0", widht=2.0)
    with pytest.raises(ValueError, match="unknown model 'efficientnetv3-s'.*efficientnetv2-s"):
        effnetv2_jax.create_model("efficientnetv3-s")
    with pytest.raises(ValueError, match="malformed block string 'r1_k3'"):
        effnetv2_jax.create_model("efficientnetv2-s", block_strings=["r1_k3"])
    with pytest.raises(ValueError, match="num_classes"):
        effnetv2_jax.create_model("efficientnet-b0", num_classes=0)
    with pytest.raises(ValueError, match="unknown activation 'swishh'"):
        effnetv2_jax.create_model("efficientnet-b0", activation="swishh")
    with pytest.raises(ValueError, match="unknown dtype"):
        effnetv2_jax.create_model("efficientnet-b0", dtype="float8")
    with pytest.raises(ValueError, match="expected images"):
        tiny()(jnp.zeros((1, 32, 32)))


def test_headless_model_returns_pooled_features():
    model = tiny(include_top=False)
    assert model.classifier is None and model.num_features == 64
    features, _ = jitted(model)[0](nnx.state(model), images())
    assert features.shape == (2, 64)


def test_default_conv_impl_follows_the_backend():
    assert ops.default_conv_impl() == ("cpu" if jax.default_backend() == "cpu" else "xla")
    assert tiny().conv_impl == ops.default_conv_impl()
    assert tiny().ops == ops.ops_for(ops.default_conv_impl())


def test_architectures_name_the_activations_the_layers_compute():
    assert ACTIVATION_NAMES == tuple(ACTIVATIONS)  # arch.py validates names without JAX
