"""Mixup and CutMix with the official semantics (official `datasets.py`)."""

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_jax.data import mixing

SEED = tf.constant([4, 2], tf.int64)


def batch(size=8, height=12, width=10, classes=8):
    """Example i: every pixel equals i; label one-hot at class i (so pairs are traceable)."""
    images = np.broadcast_to(np.arange(size, dtype=np.float32)[:, None, None, None],
                             (size, height, width, 3)).copy()
    labels = np.eye(classes, dtype=np.float32)[np.arange(size) % classes]
    return tf.constant(images), tf.constant(labels)


def mixed(images, labels, mixup_alpha, cutmix_alpha, seed=SEED):
    b, h, w = images.shape[:3]
    plan = mixing.make_plan(b, h, w, mixup_alpha, cutmix_alpha, seed)
    both = mixup_alpha > 0 and cutmix_alpha > 0
    return tuple(t.numpy() for t in mixing.mix_batch(images, labels, plan, both))


def test_partners_pairs_and_row_order():
    assert mixing.partners(8, both=False) == [7, 6, 5, 4, 3, 2, 1, 0]
    assert mixing.pair_rows(8, both=False) == [0, 7, 1, 6, 2, 5, 3, 4]
    assert mixing.partners(8, both=True) == [3, 2, 1, 0, 7, 6, 5, 4]  # reversed per half
    assert mixing.pairs(6, both=True) == [(0, 2), (1, 1), (3, 5), (4, 4)]  # odd halves
    assert mixing.pair_rows(6, both=True) == [0, 2, 1, 3, 5, 4]
    assert sorted(mixing.pair_rows(7, both=False)) == list(range(7))


def test_mixup_mixes_each_example_with_the_reversed_batch():
    images, labels = batch()
    out_images, out_labels = mixed(images, labels, 0.4, 0.0)
    lam = out_labels[np.arange(8), np.arange(8)]  # weight of each example's own class
    assert np.all(lam >= 0.5) and len(np.unique(lam)) == 8  # per example, max(lam, 1 - lam)
    np.testing.assert_allclose(out_labels[np.arange(8), 7 - np.arange(8)], 1 - lam, atol=1e-6)
    np.testing.assert_allclose(out_labels.sum(1), 1, atol=1e-6)
    expected = lam * np.arange(8) + (1 - lam) * np.arange(8)[::-1]
    np.testing.assert_allclose(out_images, np.broadcast_to(expected[:, None, None, None],
                                                           out_images.shape), atol=1e-5)


def test_beta_samples_have_the_right_law_and_never_nan():
    lam = mixing.sample_beta([4000], 0.2, SEED).numpy()
    assert 0 <= lam.min() and lam.max() <= 1
    assert lam.mean() == pytest.approx(0.5, abs=0.03)
    # Beta(0.2, 0.2): E[max(lam, 1 - lam)] = 0.5 + B(0.7, 0.2) / (2 B(0.2, 0.2)) ~ 0.8924.
    assert np.maximum(lam, 1 - lam).mean() == pytest.approx(0.892, abs=0.015)
    tiny = mixing.sample_beta([4000], 0.01, SEED).numpy()  # float32 gammas would give 0 / 0
    assert np.isfinite(tiny).all() and np.mean((tiny < 1e-3) | (tiny > 1 - 1e-3)) > 0.9


def test_cutmix_pastes_a_box_from_the_reversed_batch_and_mixes_labels_by_mean_area():
    images, labels = batch(size=6, height=16, width=20, classes=6)
    out_images, out_labels = mixed(images, labels, 0.0, 1.0)
    own = np.arange(6)[:, None, None]
    from_partner = out_images[..., 0] == (5 - own)
    assert np.all(from_partner | (out_images[..., 0] == own))  # pixels from self or partner
    areas = []
    for i in range(6):
        rows, cols = np.nonzero(from_partner[i])
        if len(rows):  # an axis-aligned box
            assert from_partner[i].sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        areas.append(from_partner[i].mean())
    mean_area = np.mean(areas)
    assert 0 < mean_area < 1 and len(set(areas)) > 3
    # Every example's label uses the batch-mean area (the official quirk).
    np.testing.assert_allclose(out_labels[np.arange(6), np.arange(6)], 1 - mean_area, atol=1e-6)
    np.testing.assert_allclose(out_labels[np.arange(6), 5 - np.arange(6)], mean_area, atol=1e-6)


def test_cutmix_box_follows_the_official_size_rule():
    plan = mixing.make_plan(500, 30, 40, 0.0, 1.0, SEED)
    top, bottom, left, right = (plan.box[:, i].numpy() for i in range(4))
    heights, widths = bottom - top, right - left
    assert np.all((0 <= top) & (top <= bottom) & (bottom <= 30))
    assert np.all((0 <= left) & (left <= right) & (right <= 40))
    # Half-sides int(sqrt(1 - area) * side) // 2: boxes away from the border have even sides,
    # in the same proportion to the image height and width.
    inner = (top > 0) & (bottom < 30) & (left > 0) & (right < 40) & (heights > 0)
    assert inner.sum() > 50
    assert np.all(heights[inner] % 2 == 0) and np.all(widths[inner] % 2 == 0)
    np.testing.assert_allclose(heights[inner] / 30, widths[inner] / 40, atol=2 / 30 + 2 / 40)
    # E[1 - area] = 0.5 for Beta(1, 1); clipping at the border only shrinks boxes.
    areas = heights * widths / (30 * 40)
    assert 0.2 < areas.mean() < 0.5
    np.testing.assert_allclose(plan.label_weight.numpy(), 1 - areas.mean(), rtol=1e-5)
    masks = [mixing.box_mask(box, 30, 40).numpy() for box in plan.box[:3]]
    assert [m.sum() / 3 for m in masks] == list(heights[:3] * widths[:3])


def test_both_on_splits_the_batch_into_a_mixup_half_and_a_cutmix_half():
    images, labels = batch(size=8)
    out_images, out_labels = mixed(images, labels, 0.5, 0.5)
    first, second = out_labels[:4], out_labels[4:]
    # Mixup half: pairs (0, 3), (1, 2), per-example weights.
    lam = first[np.arange(4), np.arange(4)]
    np.testing.assert_allclose(first[np.arange(4), 3 - np.arange(4)], 1 - lam, atol=1e-6)
    assert np.all(lam >= 0.5) and np.all(second[:, :4] == 0)
    # CutMix half: pairs (4, 7), (5, 6); pixels come from self or partner, one label weight.
    own = np.arange(4, 8)[:, None, None]
    pixels = out_images[4:, ..., 0]
    assert np.all((pixels == own) | (pixels == 11 - own))
    weight = second[np.arange(4), 4 + np.arange(4)]
    np.testing.assert_allclose(weight, weight[0], atol=1e-6)


def test_pairwise_mixing_equals_batch_mixing():
    """What the pipeline does (one pair at a time) gives the rows of the batch reference."""
    images, labels = batch(size=6)
    plan = mixing.make_plan(6, 12, 10, 0.3, 0.3, SEED)
    reference, _ = mixing.mix_batch(images, labels, plan, both=True)
    partner = mixing.partners(6, both=True)
    for i in range(6):
        row = mixing.mix_image(images[i], images[partner[i]], plan.mixup_weight[i], plan.box[i],
                               plan.is_cutmix[i])
        np.testing.assert_array_equal(row.numpy(), reference[i].numpy())


def test_the_seed_decides():
    images, labels = batch()
    a = mixed(images, labels, 0.2, 0.2)[0]
    np.testing.assert_array_equal(a, mixed(images, labels, 0.2, 0.2)[0])
    assert not np.array_equal(a, mixed(images, labels, 0.2, 0.2, tf.constant([4, 3], tf.int64))[0])
