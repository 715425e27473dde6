"""Training building blocks against hand-computed values: optimizer, schedules, stages, EMA,
BN statistic modes on 4 devices, config validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import effnetv2_jax
from effnetv2_jax.train import config as train_config
from effnetv2_jax.train import progressive, sharding
from effnetv2_jax.train.optim import kernel_mask, learning_rate_schedule, make_optimizer
from effnetv2_jax.train.state import ema_decay


def test_rmsprop_step_matches_tf1_update_by_hand():
    params = {"conv": {"kernel": jnp.array([1.0, -2.0])}, "bn": {"bias": jnp.array([0.5])}}
    grads = {"conv": {"kernel": jnp.array([0.3, 0.1])}, "bn": {"bias": jnp.array([-0.2])}}
    lr, wd = 0.1, 1e-2
    tx = make_optimizer(learning_rate=lr, weight_decay=wd)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    new = jax.tree.map(lambda p, u: p + u, params, updates)

    def tf1(w, g, decay_l2):
        g = g + (wd * w if decay_l2 else 0.0)      # coupled L2: d/dw (wd * w^2 / 2)
        ms = 0.9 * 1.0 + 0.1 * g ** 2              # accumulator starts at ONE
        mom = 0.9 * 0.0 + lr * g / np.sqrt(ms + 1e-3)
        return w - mom

    np.testing.assert_allclose(new["conv"]["kernel"],
                               tf1(np.array([1.0, -2.0]), np.array([0.3, 0.1]), True), rtol=1e-6)
    np.testing.assert_allclose(new["bn"]["bias"], tf1(np.array([0.5]), np.array([-0.2]), False),
                               rtol=1e-6)


def test_gradient_clipping_bounds_the_update():
    params = {"kernel": jnp.zeros(2)}
    tx = make_optimizer(learning_rate=1.0, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                        grad_clip_norm=1.0)
    updates, _ = tx.update({"kernel": jnp.array([30.0, 40.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], [-0.6, -0.8], rtol=1e-6)


def test_kernel_mask_selects_only_kernels_of_a_model():
    model = effnetv2_jax.create_model(
        "efficientnetv2-s", block_strings=("r1_k3_s1_e1_i16_o16_c1",
                                           "r1_k3_s2_e4_i16_o24_se0.25"),
        feature_size=32, num_classes=3)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    flat = {jax.tree_util.keystr(k): v for k, v in
            jax.tree_util.tree_leaves_with_path(kernel_mask(params))}
    assert flat["['classifier']['kernel']"] and flat["['blocks'][1]['se']['reduce']['kernel']"]
    assert not flat["['classifier']['bias']"] and not flat["['stem_bn']['scale']"]
    assert sum(flat.values()) == 9  # stem, fused, expand, dw, se x2, project, head, classifier


def test_exponential_schedule_as_the_official_code():
    # V2-S: batch 4096, 1,256,144 images, 5 warmup epochs, 0.97 every 2.4 epochs from step 0.
    spe = 1_256_144 / 4096
    lr = learning_rate_schedule(base_lr=0.016, global_batch_size=4096, steps_per_epoch=spe,
                                total_steps=107_336)
    warmup = int(5 * spe)
    assert float(lr(0)) == 0.0
    assert float(lr(warmup // 2)) == pytest.approx(0.256 * (warmup // 2) / warmup, rel=1e-5)
    # After the warmup the lr has already decayed twice (5 / 2.4 = 2.08 periods).
    assert float(lr(warmup)) == pytest.approx(0.256 * 0.97 ** 2, rel=1e-5)
    assert float(lr(107_335)) == pytest.approx(0.256 * 0.97 ** int(107_335 / (2.4 * spe)),
                                               rel=1e-4)


def test_cosine_and_constant_schedules():
    cosine = learning_rate_schedule(base_lr=0.256, global_batch_size=256, steps_per_epoch=10,
                                    total_steps=1000, schedule="cosine", warmup_epochs=1)
    assert float(cosine(5)) == pytest.approx(0.256 * 5 / 10)
    assert float(cosine(500)) == pytest.approx(0.256 * 0.5 * (1 + math.cos(math.pi / 2)), abs=1e-6)
    assert float(cosine(1000)) == pytest.approx(0.0, abs=1e-7)
    constant = learning_rate_schedule(base_lr=0.0005, global_batch_size=512, steps_per_epoch=10,
                                      total_steps=1000, schedule="constant", warmup_epochs=1)
    assert float(constant(500)) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        learning_rate_schedule(base_lr=0.1, global_batch_size=256, steps_per_epoch=1,
                               total_steps=1, schedule="linear")


def test_ema_decay_warms_up_like_tf():
    assert float(ema_decay(jnp.array(0), 0.9999)) == pytest.approx(0.1)
    assert float(ema_decay(jnp.array(90), 0.9999)) == pytest.approx(91 / 100)
    assert float(ema_decay(jnp.array(10**7), 0.9999)) == pytest.approx(0.9999)


def _values(stages):
    return {"size": [s.image_size for s in stages],
            "ram": [round(s.randaug_magnitude, 2) for s in stages],
            "mixup": [round(s.mixup_alpha, 3) for s in stages],
            "cutmix": [round(s.cutmix_alpha, 3) for s in stages],
            "dropout": [round(s.dropout_rate, 3) for s in stages]}


@pytest.mark.parametrize("name, expected", [
    ("efficientnetv2-s", {"size": [171, 214, 257, 300], "ram": [5, 6.67, 8.33, 10],
                          "mixup": [0, 0, 0, 0], "cutmix": [0, 0, 0, 0], "dropout": [0.2] * 4}),
    ("efficientnetv2-m", {"size": [192, 256, 320, 384], "ram": [5, 8.33, 11.67, 15],
                          "mixup": [0, 0.067, 0.133, 0.2], "cutmix": [0, 0.067, 0.133, 0.2],
                          "dropout": [0.3] * 4}),
    ("efficientnetv2-l", {"size": [192, 256, 320, 384], "ram": [5, 10, 15, 20],
                          "mixup": [0, 0.167, 0.333, 0.5], "cutmix": [0, 0.167, 0.333, 0.5],
                          "dropout": [0.4] * 4}),
])
def test_code_preset_matches_the_official_main(name, expected):
    stages = progressive.make_stages(progressive.preset(name, "code"), 4, 107_336)
    assert _values(stages) == expected
    # Stage boundaries at 26,834 / 53,668 / 80,502 / 107,336.
    assert [s.end_step for s in stages] == [26_834, 53_668, 80_502, 107_336]


@pytest.mark.parametrize("name, expected", [
    ("efficientnetv2-s", {"size": [128, 185, 242, 300], "ram": [5, 8.33, 11.67, 15],
                          "mixup": [0, 0, 0, 0], "cutmix": [0, 0, 0, 0],
                          "dropout": [0.1, 0.167, 0.233, 0.3]}),
    ("efficientnetv2-m", {"size": [128, 212, 296, 380], "ram": [5, 10, 15, 20],
                          "mixup": [0, 0.067, 0.133, 0.2], "cutmix": [0, 0, 0, 0],
                          "dropout": [0.1, 0.2, 0.3, 0.4]}),
    ("efficientnetv2-l", {"size": [128, 212, 296, 380], "ram": [5, 11.67, 18.33, 25],
                          "mixup": [0, 0.133, 0.267, 0.4], "cutmix": [0, 0, 0, 0],
                          "dropout": [0.1, 0.233, 0.367, 0.5]}),
])
def test_paper_preset_matches_table_6(name, expected):
    assert _values(progressive.make_stages(progressive.preset(name, "paper"), 4, 1000)) == expected


def test_stage_is_a_function_of_the_step():
    stages = progressive.make_stages(progressive.preset("efficientnetv2-s", "code"), 4, 100)
    assert [progressive.stage_at(stages, s).index for s in (0, 24, 25, 49, 50, 99, 150)] == [
        0, 0, 1, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="num_stages must be >= 1"):
        progressive.make_stages(progressive.preset("efficientnetv2-s", "code"), 0, 100)
    with pytest.raises(ValueError, match="Table 6"):
        progressive.preset("efficientnetv2-b0", "paper")


@pytest.mark.parametrize("mode, group_size, groups", [("global", 8, 1), ("per_device", 8, 4),
                                                      ("groups", 2, 2)])
def test_bn_statistic_modes_on_four_devices_match_numpy(mode, group_size, groups):
    assert jax.device_count() == 4, "conftest sets JAX_NUM_CPU_DEVICES=4"
    assert sharding.bn_groups(mode, 4, group_size) == groups
    model = effnetv2_jax.create_model(
        "efficientnetv2-s", block_strings=("r1_k3_s1_e1_i8_o8_c1",), feature_size=8,
        num_classes=2, conv_impl="xla")
    model.set_bn_groups(groups)
    mesh = sharding.make_mesh()
    x = np.random.default_rng(0).normal(1.0, 2.0, (8, 6, 6, 3)).astype(np.float32)
    batch = jax.device_put(x, sharding.batch_sharded(mesh))
    graphdef, state = nnx.split(model)

    @jax.jit
    def stem_bn(state, images):
        m = nnx.merge(graphdef, state)
        out = m.stem_bn(m.stem_conv(images), use_running_average=False)
        return out, m.stem_bn.mean[...], m.stem_conv(images)

    out, running_mean, conv = jax.device_get(stem_bn(state, batch))
    grouped = conv.reshape(groups, -1, *conv.shape[1:])
    mean = grouped.mean(axis=(1, 2, 3), keepdims=True)
    var = grouped.var(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out, ((grouped - mean) / np.sqrt(var + 1e-3)).reshape(out.shape),
                               atol=2e-4)
    np.testing.assert_allclose(running_mean, 0.1 * mean.mean(axis=0).ravel(), atol=1e-5)
    with pytest.raises(ValueError, match="must divide the 4 devices"):
        sharding.bn_groups("groups", 4, 3)


def test_batch_size_must_divide_over_devices():
    mesh = sharding.make_mesh()
    assert sharding.check_batch_size(8, mesh) == 8
    with pytest.raises(ValueError, match="train.global_batch_size=6 does not divide over 4"):
        sharding.check_batch_size(6, mesh)


@pytest.mark.parametrize("key, value, message", [
    ("progressive.num_stages", 0, "num_stages=0 must be >= 1"),
    ("train.optimizer", "lamb", "config.train.optimizer='lamb' is not one of"),
    ("model.name", "efficientnetv3-s", "config.model.name='efficientnetv3-s'"),
    ("train.global_batch_size", 0, "config.train.global_batch_size=0 must be > 0"),
    ("train.bn_mode", "sync", "config.train.bn_mode='sync'"),
])
def test_config_validation_names_the_key(key, value, message):
    config = train_config.base_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        train_config.validate(config)


def test_config_refuses_unknown_keys_and_wrong_types():
    config = train_config.base_config()
    with pytest.raises(AttributeError):
        config.train.lerning_rate = 0.1
    with pytest.raises(TypeError):
        config.train.global_batch_size = "many"
    train_config.validate(config)  # the base config itself is valid
