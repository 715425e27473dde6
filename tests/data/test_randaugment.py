"""RandAugment's op table and sampling, and AutoAugment v0's policy semantics."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_jax.data import augment_ops as ops
from effnetv2_jax.data import randaugment as ra


def sample_image(seed=0, size=48):
    """Values in [20, 200] without 128, so every op changes it and grey fill is recognisable."""
    image = np.random.RandomState(seed).randint(20, 201, (size, size, 3)).astype(np.uint8)
    image[image == 128] = 129
    return image


def seeds(n, salt=0):
    return tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(salt, tf.int64))], 1)


def map_over_seeds(fn, n, salt=0):
    """fn(seed) for n seeds, inside a tf.data map; the first two also eagerly (must agree)."""
    outs = list(tf.data.Dataset.from_tensor_slices(seeds(n, salt)).map(fn).as_numpy_iterator())
    for i in range(2):
        np.testing.assert_array_equal(fn(seeds(n, salt)[i]).numpy(), outs[i])
    return outs


def test_official_magnitude_table():
    """Official `autoaugment.py`'s RandAugment constants (translate 100 px, cutout 40)."""
    at = {m: {name: ra.level_to_arg(name, m) for name in ra.RANDAUGMENT_OPS} for m in (5, 10, 15)}
    assert [at[m]["Posterize"] for m in (5, 10, 15)] == [2, 4, 6]
    assert [at[m]["Solarize"] for m in (5, 10, 15)] == [128, 256, 384]
    assert [at[m]["SolarizeAdd"] for m in (5, 10, 15)] == [55, 110, 165]
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        assert [at[m][name] for m in (5, 10, 15)] == pytest.approx([1.0, 1.9, 2.8])
    assert at[10]["Rotate"] == 30 and at[10]["ShearX"] == at[10]["ShearY"] == pytest.approx(0.3)
    assert at[10]["TranslateX"] == at[10]["TranslateY"] == 100 and at[10]["Cutout"] == 40
    assert ra.level_to_arg("TranslateY", 9, ra.AUTOAUGMENT_TRANSLATE_CONST) == 225
    assert ra.level_to_arg("Brightness", 20) == pytest.approx(3.7)
    assert len(ra.RANDAUGMENT_OPS) == len(set(ra.RANDAUGMENT_OPS)) == 16
    with pytest.raises(ValueError, match="unknown augmentation op 'Blur'.*AutoContrast"):
        ra.level_to_arg("Blur", 5)


def candidates(image, magnitude):
    """Every output one RandAugment layer can give, except cutout (whose centre is random)."""
    x = tf.constant(image)
    out = {}
    for name in ra.RANDAUGMENT_OPS:
        arg = ra.level_to_arg(name, magnitude)
        fn = {"AutoContrast": lambda: ops.autocontrast(x), "Equalize": lambda: ops.equalize(x),
              "Invert": lambda: ops.invert(x), "Posterize": lambda: ops.posterize(x, arg),
              "Solarize": lambda: ops.solarize(x, arg),
              "SolarizeAdd": lambda: ops.solarize_add(x, arg),
              "Color": lambda: ops.color(x, arg), "Contrast": lambda: ops.contrast(x, arg),
              "Brightness": lambda: ops.brightness(x, arg),
              "Sharpness": lambda: ops.sharpness(x, arg)}.get(name)
        if fn is not None:
            out[name] = fn().numpy()
        elif name != "Cutout":
            op = {"Rotate": ops.rotate, "ShearX": ops.shear_x, "ShearY": ops.shear_y,
                  "TranslateX": ops.translate_x, "TranslateY": ops.translate_y}[name]
            out[name + "+"] = op(x, arg).numpy()
            out[name + "-"] = op(x, -arg).numpy()
    return out


def identify(out, image, known):
    for name, candidate in known.items():
        if np.array_equal(out, candidate):
            return name
    changed = np.any(out != image, axis=-1)
    rows, cols = np.nonzero(changed)
    if changed.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1) and np.all(out[changed] == 128):
        return "Cutout"
    raise AssertionError("output matches no RandAugment op")


def test_randaugment_draws_each_of_16_ops_uniformly_and_always_applies_it():
    image, magnitude, n = sample_image(), 3.0, 320
    known = candidates(image, magnitude)
    assert len({v.tobytes() for v in known.values()}) == len(known)  # all distinguishable
    outs = map_over_seeds(lambda s: ra.randaugment(tf.constant(image), 1, magnitude, s), n)
    counts = collections.Counter(identify(out, image, known) for out in outs)
    per_op = collections.Counter(name.rstrip("+-") for name in counts.elements())
    assert set(per_op) == set(ra.RANDAUGMENT_OPS)
    assert all(6 <= c <= 40 for c in per_op.values()), per_op  # expected 20 each
    for name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
        assert counts[name + "+"] > 0 and counts[name + "-"] > 0  # random sign


def test_randaugment_layers_compose_and_seed_decides():
    image = tf.constant(sample_image(1))
    seed = tf.constant([5, 6], tf.int64)
    np.testing.assert_array_equal(ra.randaugment(image, 0, 10.0, seed), image)
    two = ra.randaugment(image, 2, 10.0, seed).numpy()
    np.testing.assert_array_equal(two, ra.randaugment(image, 2, 10.0, seed).numpy())
    # At M=10 a 48 px image can come out all grey (translations of 100 px); M=3 keeps them apart.
    outs = map_over_seeds(lambda s: ra.randaugment(image, 2, 3.0, s), 24, salt=3)
    assert len({o.tobytes() for o in outs}) > 20


def test_policy_v0_table():
    assert len(ra.POLICY_V0) == 25
    for sub_policy in ra.POLICY_V0:
        assert len(sub_policy) == 2
        for name, probability, level in sub_policy:
            assert name in ra.RANDAUGMENT_OPS and 0 <= probability <= 1 and 0 <= level <= 10
    assert ra.POLICY_V0[0] == (("Equalize", 0.8, 1), ("ShearY", 0.8, 4))
    assert ra.POLICY_V0[-1] == (("Color", 0.8, 6), ("Rotate", 0.4, 5))


def test_autoaugment_picks_sub_policies_uniformly():
    image = sample_image(2)
    policy = ((("Invert", 1.0, 0), ("Invert", 0.0, 0)),
              (("Equalize", 1.0, 0), ("Invert", 0.0, 0)),
              (("AutoContrast", 1.0, 0), ("Invert", 0.0, 0)),
              (("Posterize", 1.0, 4), ("Invert", 0.0, 0)))
    x = tf.constant(image)
    expected = [ops.invert(x).numpy(), ops.equalize(x).numpy(), ops.autocontrast(x).numpy(),
                ops.posterize(x, 1).numpy()]  # level 4 -> int(4 / 10 * 4) = 1 bit
    outs = map_over_seeds(lambda s: ra.autoaugment(tf.constant(image), s, policy), 200)
    picks = [next(i for i, e in enumerate(expected) if np.array_equal(o, e)) for o in outs]
    assert all(30 <= c <= 70 for c in collections.Counter(picks).values())  # expected 50 each


def test_autoaugment_applies_each_op_with_its_probability():
    image = sample_image(3)
    policy = ((("Invert", 0.3, 0), ("Solarize", 1.0, 0)),)  # Solarize level 0: invert all
    outs = map_over_seeds(lambda s: ra.autoaugment(tf.constant(image), s, policy), 300)
    inverted_twice = sum(np.array_equal(o, image) for o in outs)
    inverted_once = sum(np.array_equal(o, 255 - image) for o in outs)
    assert inverted_twice + inverted_once == 300
    assert 60 <= inverted_twice <= 120  # expected 90


def test_autoaugment_v0_runs_and_uses_autoaugment_constants():
    image = sample_image(4, size=40)
    outs = map_over_seeds(lambda s: ra.autoaugment(tf.constant(image), s), 50)
    assert len({o.tobytes() for o in outs}) > 12  # 25 sub-policies, mostly deterministic ops
    assert any(np.array_equal(o, image) for o in outs)  # both ops skipped (probability < 1)
    # Sub-policy 15: TranslateY at level 9 with translate_const 250 moves 225 px: all grey.
    policy = ((("TranslateY", 1.0, 9), ("Invert", 0.0, 0)),)
    out = ra.autoaugment(tf.constant(image), tf.constant([1, 2], tf.int64), policy).numpy()
    assert np.all(out == 128)
