"""Registered variants under their official names, with the metadata their weights need.

EfficientNetV2 S/M/L/XL and B0-B3 (google/automl `effnetv2_configs.py`), EfficientNet V1 B0-B8 and
L2 (tensorflow/tpu `efficientnet_builder.py`, with V1's "never round down more than 10%" rule),
and EfficientNet-Lite0-4 (tensorflow/tpu `lite/efficientnet_lite_builder.py`). Block strings,
width/depth/dropout and image sizes come from those files; the eval preprocessing metadata from
the official `preprocessing.py` of each repository.

Defaults follow the official code where it differs from the paper: V2 BN momentum 0.9 (paper
0.99), fixed per-model dropout. Every field can be overridden in `create_model`.
"""

from __future__ import annotations

import dataclasses

from effnetv2_jax.models.arch import ArchConfig
from effnetv2_jax.preprocessing import Preprocessing

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


# Positional: mean, std, interpolation, crop_padding, squash_min_size (preprocessing.py).
V2_PREPROCESSING = Preprocessing((128.0,) * 3, (128.0,) * 3, "bilinear", 32, 320)
V1_PREPROCESSING = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, "bicubic", 32, None)
LITE_PREPROCESSING = Preprocessing((127.0,) * 3, (128.0,) * 3, "bicubic", 32, None)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named architecture plus the sizes and recipe values the official code pairs with it.

    Attributes:
      name: official name, e.g. "efficientnetv2-s" (also the checkpoint variable prefix).
      arch: the architecture (block strings, scaling, dropout, survival, BN).
      train_size, eval_size: image sizes in pixels (V2 train size = final progressive stage).
      preprocessing: normalisation and resize/crop of the official weights.
      randaug_magnitude: final RandAugment magnitude in the official code (0 = not used).
      mixup_alpha: final mixup (= cutmix) alpha in the official code.
      augment: the official augmentation name ("randaug", "effnetv1_autoaug" or "none").
      family: "efficientnetv2", "efficientnet", "efficientnet-lite" or "custom".
    """

    name: str
    arch: ArchConfig
    train_size: int
    eval_size: int
    preprocessing: Preprocessing
    randaug_magnitude: float = 0.0
    mixup_alpha: float = 0.0
    augment: str = "none"
    family: str = "custom"


V2_BASE = ("r1_k3_s1_e1_i32_o16_c1", "r2_k3_s2_e4_i16_o32_c1", "r2_k3_s2_e4_i32_o48_c1",
           "r3_k3_s2_e4_i48_o96_se0.25", "r5_k3_s1_e6_i96_o112_se0.25",
           "r8_k3_s2_e6_i112_o192_se0.25")
V2_S = ("r2_k3_s1_e1_i24_o24_c1", "r4_k3_s2_e4_i24_o48_c1", "r4_k3_s2_e4_i48_o64_c1",
        "r6_k3_s2_e4_i64_o128_se0.25", "r9_k3_s1_e6_i128_o160_se0.25",
        "r15_k3_s2_e6_i160_o256_se0.25")
V2_M = ("r3_k3_s1_e1_i24_o24_c1", "r5_k3_s2_e4_i24_o48_c1", "r5_k3_s2_e4_i48_o80_c1",
        "r7_k3_s2_e4_i80_o160_se0.25", "r14_k3_s1_e6_i160_o176_se0.25",
        "r18_k3_s2_e6_i176_o304_se0.25", "r5_k3_s1_e6_i304_o512_se0.25")
V2_L = ("r4_k3_s1_e1_i32_o32_c1", "r7_k3_s2_e4_i32_o64_c1", "r7_k3_s2_e4_i64_o96_c1",
        "r10_k3_s2_e4_i96_o192_se0.25", "r19_k3_s1_e6_i192_o224_se0.25",
        "r25_k3_s2_e6_i224_o384_se0.25", "r7_k3_s1_e6_i384_o640_se0.25")
V2_XL = ("r4_k3_s1_e1_i32_o32_c1", "r8_k3_s2_e4_i32_o64_c1", "r8_k3_s2_e4_i64_o96_c1",
         "r16_k3_s2_e4_i96_o192_se0.25", "r24_k3_s1_e6_i192_o256_se0.25",
         "r32_k3_s2_e6_i256_o512_se0.25", "r8_k3_s1_e6_i512_o640_se0.25")
# V1 B0 base, in the tensorflow/tpu spelling (two stride digits). Lite uses the same strings.
V1_BASE = ("r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25",
           "r2_k5_s22_e6_i24_o40_se0.25", "r3_k3_s22_e6_i40_o80_se0.25",
           "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
           "r1_k3_s11_e6_i192_o320_se0.25")

_REGISTRY: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    """Adds a variant to the registry (a name may be registered once)."""
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} is already registered")
    _REGISTRY[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (registered: {', '.join(list_models())})") \
            from None


def list_models(family: str | None = None) -> list[str]:
    """Registered names, optionally of one family ("efficientnetv2", "efficientnet",
    "efficientnet-lite")."""
    return [n for n, v in _REGISTRY.items() if family is None or v.family == family]


# (blocks, width, depth, train size, eval size, dropout, randaug max, mixup alpha, augment)
_V2 = {
    "s": (V2_S, 1.0, 1.0, 300, 384, 0.2, 10, 0.0, "randaug"),
    "m": (V2_M, 1.0, 1.0, 384, 480, 0.3, 15, 0.2, "randaug"),
    "l": (V2_L, 1.0, 1.0, 384, 480, 0.4, 20, 0.5, "randaug"),
    "xl": (V2_XL, 1.0, 1.0, 384, 512, 0.4, 20, 0.5, "randaug"),
    "b0": (V2_BASE, 1.0, 1.0, 192, 224, 0.2, 0, 0.0, "effnetv1_autoaug"),
    "b1": (V2_BASE, 1.0, 1.1, 192, 240, 0.2, 0, 0.0, "effnetv1_autoaug"),
    "b2": (V2_BASE, 1.1, 1.2, 208, 260, 0.3, 0, 0.0, "effnetv1_autoaug"),
    "b3": (V2_BASE, 1.2, 1.4, 240, 300, 0.3, 0, 0.0, "effnetv1_autoaug"),
}
for _key, (_blocks, _w, _d, _train, _eval, _drop, _ram, _mix, _aug) in _V2.items():
    register(Variant(
        name=f"efficientnetv2-{_key}",
        arch=ArchConfig(_blocks, width=_w, depth=_d, rounding="v2", dropout_rate=_drop,
                        bn_momentum=0.9),
        train_size=_train, eval_size=_eval,
        # S-XL use (x-128)/128 and squash at >= 320 px; B0-B3 the V1-style mean/std + bicubic.
        preprocessing=V2_PREPROCESSING if _aug == "randaug" else V1_PREPROCESSING,
        randaug_magnitude=_ram, mixup_alpha=_mix, augment=_aug, family="efficientnetv2"))

# (width, depth, resolution, dropout); V1 trains at its eval resolution in tensorflow/tpu.
_V1 = {
    "b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3), "b4": (1.4, 1.8, 380, 0.4), "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5), "b7": (2.0, 3.1, 600, 0.5), "b8": (2.2, 3.6, 672, 0.5),
    "l2": (4.3, 5.3, 800, 0.5),
}
for _key, (_w, _d, _res, _drop) in _V1.items():
    register(Variant(
        name=f"efficientnet-{_key}",
        arch=ArchConfig(V1_BASE, width=_w, depth=_d, rounding="v1", dropout_rate=_drop,
                        bn_momentum=0.99),
        train_size=_res, eval_size=_res, preprocessing=V1_PREPROCESSING, family="efficientnet"))

_LITE = {"lite0": (1.0, 1.0, 224, 0.2), "lite1": (1.0, 1.1, 240, 0.2),
         "lite2": (1.1, 1.2, 260, 0.3), "lite3": (1.2, 1.4, 280, 0.3),
         "lite4": (1.4, 1.8, 300, 0.3)}
for _key, (_w, _d, _res, _drop) in _LITE.items():
    register(Variant(
        name=f"efficientnet-{_key}",
        arch=ArchConfig(V1_BASE, width=_w, depth=_d, rounding="v1", dropout_rate=_drop,
                        bn_momentum=0.99, activation="relu6", use_se=False,
                        fixed_stem_head=True, fixed_end_repeats=True),
        train_size=_res, eval_size=_res, preprocessing=LITE_PREPROCESSING,
        family="efficientnet-lite"))
