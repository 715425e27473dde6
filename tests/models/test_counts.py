"""Parameter and FLOP counts equal the official ones (official `effnetv2_model_test.py`), for every variant."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import effnetv2_jax
from effnetv2_jax.models.arch import ArchConfig, resolve_arch
from effnetv2_jax.models.rounding import round_filters, round_repeats

# name: (total incl. BN moving statistics, trainable, MACs at the eval size in billions)
OFFICIAL = {
    "efficientnetv2-s": (21_612_360, 21_458_488, 8.37),
    "efficientnetv2-m": (54_431_388, 54_139_356, 24.58),
    "efficientnetv2-l": (119_027_848, 118_515_272, 56.08),
    "efficientnetv2-xl": (208_896_832, 208_119_808, 93.35),
    "efficientnetv2-b0": (7_200_312, 7_139_704, 0.718),
    "efficientnetv2-b1": (8_212_124, 8_141_052, 1.197),
    "efficientnetv2-b2": (10_178_374, 10_096_086, 1.698),
    "efficientnetv2-b3": (14_467_622, 14_358_406, 3.011),
    "efficientnet-b0": (5_330_564, 5_288_548, 0.386),
    "efficientnet-b1": (7_856_232, 7_794_184, 0.687),
    "efficientnet-b2": (9_177_562, 9_109_994, 0.994),
    "efficientnet-b3": (12_320_528, 12_233_232, 1.827),
    "efficientnet-b4": (19_466_816, 19_341_616, 4.39),
    "efficientnet-b5": (30_562_520, 30_389_784, 10.27),
    "efficientnet-b6": (43_265_136, 43_040_704, 19.07),
    "efficientnet-b7": (66_658_680, 66_347_960, 37.75),
    "efficientnet-b8": (87_793_174, 87_413_142, 62.6),
    "efficientnet-l2": (481_399_996, 480_309_308, 475.7),
    "efficientnet-lite0": (4_694_024, 4_652_008, 0.385),
    "efficientnet-lite1": (5_470_344, 5_416_680, 0.600),
    "efficientnet-lite2": (6_150_168, 6_092_072, 0.860),
    "efficientnet-lite3": (8_273_768, 8_197_096, 1.383),
    "efficientnet-lite4": (13_118_936, 13_006_568, 2.553),
}
# Blocks after depth scaling (official `effnetv2_model.py`, stochastic depth).
NUM_BLOCKS = {"efficientnetv2-s": 40, "efficientnetv2-m": 57, "efficientnetv2-l": 79,
              "efficientnetv2-xl": 100, "efficientnetv2-b0": 21, "efficientnetv2-b1": 27,
              "efficientnetv2-b2": 28, "efficientnetv2-b3": 32, "efficientnet-b0": 16,
              "efficientnet-b7": 55, "efficientnet-l2": 88}


def test_every_registered_variant_has_a_reference_row():
    assert sorted(effnetv2_jax.list_models()) == sorted(OFFICIAL)
    assert len(effnetv2_jax.list_models("efficientnetv2")) == 8
    assert len(effnetv2_jax.list_models("efficientnet")) == 10
    assert len(effnetv2_jax.list_models("efficientnet-lite")) == 5


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_parameter_counts_equal_the_official_ones(name):
    total, trainable, _ = OFFICIAL[name]
    counts = effnetv2_jax.count_params(name)
    assert counts["trainable"] == trainable
    assert counts["total"] == total


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_flops_within_one_percent(name):
    macs = effnetv2_jax.count_flops(name)
    expected = OFFICIAL[name][2] * 1e9
    assert abs(macs - expected) / expected < 0.01, (name, macs)


@pytest.mark.parametrize("name, blocks", sorted(NUM_BLOCKS.items()))
def test_block_counts(name, blocks):
    assert resolve_arch(effnetv2_jax.get_variant(name).arch).num_blocks == blocks


def test_v1_rounding_keeps_b3_stage_one_at_24_channels():
    # 16 * 1.2 = 19.2 rounds to 16; V1's rule refuses to drop more than 10% and gives 24.
    assert round_filters(16, 1.2, rule="v2") == 16
    assert round_filters(16, 1.2, rule="v1") == 24
    resolved = resolve_arch(effnetv2_jax.get_variant("efficientnet-b3").arch)
    assert resolved.blocks[0].out_channels == 24
    v2_rule = resolve_arch(effnetv2_jax.get_variant("efficientnet-b3").arch.replace(rounding="v2"))
    assert v2_rule.blocks[0].out_channels == 16
    # The V2 repository's re-implementation of B3 (no 10% rule) has 12,314,268 parameters.
    assert effnetv2_jax.count_params("efficientnet-b3", rounding="v2")["total"] == 12_314_268


def test_rounding_and_repeat_rules():
    assert round_filters(32, 1.1) == 32 and round_filters(32, 1.4) == 48
    assert round_filters(1280, 1.2) == 1536 and round_filters(3, 0.1) == 8
    assert round_filters(40, 0) == 40
    assert round_repeats(4, 1.8) == 8 and round_repeats(1, 3.1) == 4 and round_repeats(3, None) == 3
    with pytest.raises(ValueError, match="unknown rounding rule"):
        round_filters(8, 1.0, rule="v3")


def test_lite_block_zero_is_built_from_the_fixed_32_channel_stem():
    resolved = resolve_arch(effnetv2_jax.get_variant("efficientnet-lite4").arch)
    assert resolved.stem_channels == 32 and resolved.head_channels == 1280
    first = resolved.blocks[0]
    # Declared input is round(32 * 1.4) = 48, but the depthwise conv sees the real 32 channels.
    assert first.in_channels == 32 and first.mid_channels == 32 and not first.residual
    stages = [sum(1 for b in resolved.blocks if b.stage == s) for s in range(7)]
    assert stages == [1, 4, 4, 6, 6, 8, 1]
    assert all(b.se_channels is None for b in resolved.blocks)


def test_counts_follow_overrides():
    base = effnetv2_jax.count_params("efficientnetv2-s", num_classes=10)["trainable"]
    assert base == OFFICIAL["efficientnetv2-s"][1] - 1281 * 990
    no_top = effnetv2_jax.count_params("efficientnetv2-s", include_top=False)["trainable"]
    assert no_top == OFFICIAL["efficientnetv2-s"][1] - 1281 * 1000
    strings = ["r1_k3_s1_e1_i32_o16_c1", "r1_k3_s2_e4_i16_o32_se0.25"]
    custom = effnetv2_jax.ArchConfig(tuple(strings), feature_size=64)
    # stem 3*3*3*32 + BN; fused 3*3*32*16 + BN; mbconv 16*64 + BN, dw 9*64 + BN,
    # SE from int(16 * 0.25) = 4 channels (64*4+4 + 4*64+64), project 64*32 + BN;
    # head 32*64 + BN; dense 64*10 + 10.
    expected = (864 + 64 + 4608 + 32 + 1024 + 128 + 576 + 128 + 580 + 2048 + 64
                + 2048 + 128 + 650)
    assert effnetv2_jax.count_params(custom, num_classes=10)["trainable"] == expected
    with pytest.raises(ValueError, match="image_size is required"):
        effnetv2_jax.count_flops(custom)


def _tiny_variants():
    return [("efficientnetv2-b0", dict(depth=0.3)),   # fused e1, fused e4, MBConv + SE
            ("efficientnet-b0", dict(depth=0.3)),     # 5x5 kernels, V1 rounding
            ("efficientnet-lite0", dict(depth=0.3))]  # relu6, no SE


@pytest.mark.slow  # compiles five models for XLA's cost analysis
@pytest.mark.parametrize("name, overrides", _tiny_variants())
def test_flops_agree_with_xla_cost_analysis(name, overrides):
    size = 64
    model = effnetv2_jax.create_model(name, conv_impl="xla", **overrides)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    compiled = forward.lower(state, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    ours = 2 * effnetv2_jax.count_flops(name, size, **overrides)  # 1 MAC = 2 FLOPs
    # XLA also counts element-wise ops (BN, activations, SE gates) and skips padded taps.
    assert 0.95 < analysis["flops"] / ours < 1.06, (analysis["flops"], ours)
