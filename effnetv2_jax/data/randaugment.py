"""RandAugment and AutoAugment policy v0, with the official magnitude mapping (official `autoaugment.py`).

RandAugment (V2 S-XL): `num_layers` times, draw one of the 16 ops uniformly and always apply it
at the one magnitude M (a float, fixed per progressive-learning stage; `_MAX_LEVEL` = 10):

| op                                     | argument at magnitude M        | note                  |
|----------------------------------------|--------------------------------|-----------------------|
| AutoContrast, Equalize, Invert         | none                           |                       |
| Rotate                                 | M/10 * 30 degrees, random sign |                       |
| Posterize                              | keep int(M/10 * 4) bits        | larger M: weaker op   |
| Solarize                               | threshold int(M/10 * 256)      | no-op for M >= 10     |
| SolarizeAdd                            | add int(M/10 * 110) below 128  |                       |
| Color, Contrast, Brightness, Sharpness | factor M/10 * 1.8 + 0.1        | identity at M = 5     |
| ShearX, ShearY                         | M/10 * 0.3, random sign        |                       |
| TranslateX, TranslateY                 | M/10 * 100 pixels, random sign | absolute, any size    |
| Cutout                                 | pad int(M/10 * 40)             | square up to 2 * pad  |

The official code also samples an op "probability" in RandAugment and never uses it; it is
left out. AutoAugment v0 (B-series, V1 `ckptsaug`) picks one of 25 two-op sub-policies and
applies each op with its own probability and integer level, with translate_const 250 and
cutout_const 100.

Randomness is stateless: each image passes a `[2]` int64 seed, split here into one seed per
layer (op choice, sign, cutout centre), so the same seed gives the same augmentation eagerly,
inside `tf.data`, and after a restart.
"""

from __future__ import annotations

import functools

from effnetv2_jax._extras import require
from effnetv2_jax.data import augment_ops as ops

tf = require("tensorflow", "data")

MAX_LEVEL = 10.0
RANDAUGMENT_TRANSLATE_CONST = 100
RANDAUGMENT_CUTOUT_CONST = 40
AUTOAUGMENT_TRANSLATE_CONST = 250
AUTOAUGMENT_CUTOUT_CONST = 100

# In the official index order (op k is drawn with probability 1/16).
RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                   "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                   "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")

# AutoAugment policy v0 (google/automl autoaugment.py `policy_v0`): (op, probability, level).
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

_SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def level_to_arg(name: str, level: float, translate_const: float = RANDAUGMENT_TRANSLATE_CONST,
                 cutout_const: float = RANDAUGMENT_CUTOUT_CONST) -> float | int | None:
    """The op's argument at magnitude `level`, before the random sign (see the module table)."""
    fraction = level / MAX_LEVEL
    arguments = {
        "AutoContrast": None, "Equalize": None, "Invert": None,
        "Rotate": fraction * 30.0,
        "Posterize": int(fraction * 4),
        "Solarize": int(fraction * 256),
        "SolarizeAdd": int(fraction * 110),
        "Color": fraction * 1.8 + 0.1, "Contrast": fraction * 1.8 + 0.1,
        "Brightness": fraction * 1.8 + 0.1, "Sharpness": fraction * 1.8 + 0.1,
        "ShearX": fraction * 0.3, "ShearY": fraction * 0.3,
        "TranslateX": fraction * float(translate_const),
        "TranslateY": fraction * float(translate_const),
        "Cutout": int(fraction * cutout_const),
    }
    if name not in arguments:
        raise ValueError(f"unknown augmentation op {name!r} (valid: {', '.join(RANDAUGMENT_OPS)})")
    return arguments[name]


_OPS = {"AutoContrast": ops.autocontrast, "Equalize": ops.equalize, "Invert": ops.invert,
        "Rotate": ops.rotate, "Posterize": ops.posterize, "Solarize": ops.solarize,
        "SolarizeAdd": ops.solarize_add, "Color": ops.color, "Contrast": ops.contrast,
        "Brightness": ops.brightness, "Sharpness": ops.sharpness, "ShearX": ops.shear_x,
        "ShearY": ops.shear_y, "TranslateX": ops.translate_x, "TranslateY": ops.translate_y}


def apply_op(image: tf.Tensor, name: str, level: float, seed: tf.Tensor,
             translate_const: float = RANDAUGMENT_TRANSLATE_CONST,
             cutout_const: float = RANDAUGMENT_CUTOUT_CONST) -> tf.Tensor:
    """Applies op `name` at magnitude `level` to a uint8 `[height, width, 3]` image.

    `seed` (`[2]` int64) draws the sign of geometric ops (each sign with probability 1/2) and
    the cutout centre. Arguments stay Python numbers, so each op is built for its exact value.
    """
    arg = level_to_arg(name, level, translate_const, cutout_const)
    sign_seed, cutout_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if name == "Cutout":
        return ops.cutout(image, arg, cutout_seed)
    op = _OPS[name]
    if arg is None:
        return op(image)
    if name in _SIGNED:
        negate = tf.random.stateless_uniform([], sign_seed) < 0.5
        return tf.cond(negate, lambda: op(image, -arg), lambda: op(image, arg))
    return op(image, arg)


def randaugment(image: tf.Tensor, num_layers: int, magnitude: float, seed: tf.Tensor) -> tf.Tensor:
    """RandAugment(N=num_layers, M=magnitude) on a uint8 `[height, width, 3]` image."""
    if num_layers == 0:
        return image
    for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_layers)):
        choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 2))
        op_index = tf.random.stateless_uniform([], choice_seed, 0, len(RANDAUGMENT_OPS),
                                               dtype=tf.int32)
        branches = [functools.partial(apply_op, image, name, magnitude, op_seed)
                    for name in RANDAUGMENT_OPS]
        image = tf.switch_case(op_index, branches)
    return image


def autoaugment(image: tf.Tensor, seed: tf.Tensor, policy=POLICY_V0) -> tf.Tensor:
    """AutoAugment: one uniformly drawn sub-policy of `policy`, each op with its probability.

    Built as one `switch_case` per op position over the distinct (op, argument) pairs at that
    position, plus "skip": far cheaper to trace than a case per sub-policy with nested conds,
    and the same distribution.
    """
    num_steps = max(len(steps) for steps in policy)
    choice_seed, *step_seeds = tf.unstack(
        tf.random.experimental.stateless_split(seed, 1 + num_steps))
    choice = tf.random.stateless_uniform([], choice_seed, 0, len(policy), dtype=tf.int32)
    for position, step_seed in enumerate(step_seeds):
        apply_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(step_seed, 2))
        branches, branch_of_policy, probabilities = {}, [], []
        for steps in policy:
            name, probability, level = steps[position] if position < len(steps) else (None, 0, 0)
            arg = None if name is None else level_to_arg(
                name, level, AUTOAUGMENT_TRANSLATE_CONST, AUTOAUGMENT_CUTOUT_CONST)
            branches.setdefault((name, arg), (name, level))
            branch_of_policy.append(list(branches).index((name, arg)))
            probabilities.append(probability)
        applies = tf.random.stateless_uniform([], apply_seed) < tf.gather(probabilities, choice)
        skip = len(branches)
        branch = tf.where(applies, tf.gather(branch_of_policy, choice), skip)
        functions = [functools.partial(apply_op, image, name, level, op_seed,
                                       AUTOAUGMENT_TRANSLATE_CONST, AUTOAUGMENT_CUTOUT_CONST)
                     if name is not None else functools.partial(tf.identity, image)
                     for name, level in branches.values()]
        image = tf.switch_case(branch, functions + [functools.partial(tf.identity, image)])
    return image
