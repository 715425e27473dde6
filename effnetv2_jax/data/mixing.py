"""Mixup and CutMix with the official semantics (google/automl `efficientnetv2/datasets.py`).

* Mixup: per example `lam ~ Beta(alpha, alpha)`, `lam = max(lam, 1 - lam)`; each example is
  mixed with the batch reversed: `x * lam + x[::-1] * (1 - lam)`, labels likewise.
* CutMix: per example `area ~ Beta(alpha, alpha)` and a box centre uniform over the pixels; the
  box has half-sides `int(sqrt(1 - area) * W) // 2` and `int(sqrt(1 - area) * H) // 2`, clipped
  to the image, and takes its pixels from the reversed batch. Labels mix with the batch-mean box
  area, the same weight for every example (an official quirk, kept).
* Both alphas > 0: the first `batch // 2` examples get mixup, the rest CutMix, each half
  reversed within itself.

Labels are soft targets `[batch, classes]`; label smoothing stays in the loss. The official code
mixes each host's batch; so does the pipeline (one plan per process batch, keyed by the step).

All randomness of a batch is drawn up front into a `MixPlan`. `mix_batch` applies a plan to a
whole batch (the reference form). The pipeline applies the same plan pair by pair instead
(`mix_pair`): "mixed with the reversed batch" pairs example i with example `partner[i]`, so
each pair can be decoded, augmented and mixed in one parallel `tf.data` call, which is far
cheaper on CPU than broadcasting over a whole batch. The pipeline then emits each batch's rows
pair by pair, in the order `pair_rows` gives; the examples, their partners and every number
are the official ones.
"""

from __future__ import annotations

import dataclasses

from effnetv2_jax._extras import require

tf = require("tensorflow", "data")


def sample_beta(shape, alpha: float, seed: tf.Tensor) -> tf.Tensor:
    """Stateless Beta(alpha, alpha) samples, float32, as a ratio of two Gamma(alpha) draws.

    Gammas are drawn in float64 because for small alpha (0.067 in the M/L recipes) float32
    draws underflow to 0; if both still do, the sample is 1 (the Beta's mass sits at 0 and 1).
    """
    seed_a, seed_b = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    a = tf.random.stateless_gamma(shape, seed_a, alpha, dtype=tf.float64)
    b = tf.random.stateless_gamma(shape, seed_b, alpha, dtype=tf.float64)
    total = a + b
    return tf.cast(tf.where(total > 0, a / tf.where(total > 0, total, 1.0), 1.0), tf.float32)


def partners(batch: int, both: bool) -> list[int]:
    """`partner[i]`: the example that example i is mixed with (reversal, per half if both)."""
    if not both:
        return [batch - 1 - i for i in range(batch)]
    half = batch // 2
    return [half - 1 - i for i in range(half)] + [batch + half - 1 - i
                                                  for i in range(half, batch)]


def pairs(batch: int, both: bool) -> list[tuple[int, int]]:
    """The pairs `(i, partner[i])` with `i <= partner[i]`; the middle of an odd run pairs with
    itself (it is mixed with itself, as in the official code)."""
    return [(i, p) for i, p in enumerate(partners(batch, both)) if i <= p]


def pair_rows(batch: int, both: bool) -> list[int]:
    """Batch positions in the order the pipeline emits mixed rows: each pair's two members."""
    return [i for a, c in pairs(batch, both) for i in ((a,) if a == c else (a, c))]


@dataclasses.dataclass(frozen=True)
class MixPlan:
    """Everything random about mixing one batch (tensors indexed by batch position).

    Attributes:
      mixup_weight: float32 `[b]`: mixup's lam for mixup rows (1 elsewhere).
      box: int32 `[b, 4]`: the CutMix box `(top, bottom, left, right)`, end-exclusive pixels,
        for CutMix rows (empty elsewhere).
      is_cutmix: bool `[b]`.
      label_weight, partner_label_weight: float32 `[b]`: weights of the row's own label and of
        its partner's (lam and 1 - lam; CutMix: 1 - mean area and mean area).
    """

    mixup_weight: tf.Tensor
    box: tf.Tensor
    is_cutmix: tf.Tensor
    label_weight: tf.Tensor
    partner_label_weight: tf.Tensor


def make_plan(batch: int, height: int, width: int, mixup_alpha: float, cutmix_alpha: float,
              seed: tf.Tensor) -> MixPlan:
    """Draws a batch's mixup weights and CutMix boxes (the official rules, module docstring)."""
    mixup_seed, area_seed, y_seed, x_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    first_cutmix = batch // 2 if mixup_alpha > 0 and cutmix_alpha > 0 else (
        0 if cutmix_alpha > 0 else batch)
    is_cutmix = tf.range(batch) >= first_cutmix
    lam = (sample_beta([batch], mixup_alpha, mixup_seed) if mixup_alpha > 0
           else tf.ones([batch]))
    lam = tf.where(is_cutmix, 1.0, tf.maximum(lam, 1.0 - lam))
    if cutmix_alpha > 0:
        area = sample_beta([batch], cutmix_alpha, area_seed)
        center_y = tf.random.stateless_uniform([batch], y_seed, 0, height, dtype=tf.int32)
        center_x = tf.random.stateless_uniform([batch], x_seed, 0, width, dtype=tf.int32)
        ratio = tf.sqrt(1.0 - area)
        half_h = tf.cast(ratio * height, tf.int32) // 2
        half_w = tf.cast(ratio * width, tf.int32) // 2
        box = tf.stack([tf.clip_by_value(center_y - half_h, 0, height),
                        tf.clip_by_value(center_y + half_h, 0, height),
                        tf.clip_by_value(center_x - half_w, 0, width),
                        tf.clip_by_value(center_x + half_w, 0, width)], axis=1)
        box = tf.where(is_cutmix[:, None], box, 0)
        box_area = tf.cast((box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2]), tf.float32)
        # Batch-mean area over the CutMix rows: one label weight for all of them (official).
        mean_area = tf.reduce_sum(box_area) / float((batch - first_cutmix) * height * width)
    else:
        box, mean_area = tf.zeros([batch, 4], tf.int32), 0.0
    label_weight = tf.where(is_cutmix, 1.0 - mean_area, lam)
    partner_label_weight = tf.where(is_cutmix, mean_area, 1.0 - lam)
    return MixPlan(lam, box, is_cutmix, label_weight, partner_label_weight)


def box_mask(box: tf.Tensor, height: int, width: int, channels: int = 3) -> tf.Tensor:
    """float32 `[height, width, channels]`: 1 inside `box = (top, bottom, left, right)`."""
    inside = tf.ones([box[1] - box[0], box[3] - box[2], channels])
    return tf.pad(inside, [[box[0], height - box[1]], [box[2], width - box[3]], [0, 0]])


def mix_image(image: tf.Tensor, partner: tf.Tensor, mixup_weight: tf.Tensor, box: tf.Tensor,
              is_cutmix: tf.Tensor) -> tf.Tensor:
    """One row of a mixed batch: `[H, W, C]` image and its partner (static H, W, C)."""
    height, width, channels = image.shape

    def cut():
        mask = box_mask(box, height, width, channels)
        return (1.0 - mask) * image + mask * partner

    def mix():
        return image * mixup_weight + partner * (1.0 - mixup_weight)

    return tf.cond(is_cutmix, cut, mix)


def mix_labels(label: tf.Tensor, partner_label: tf.Tensor, weight: tf.Tensor,
               partner_weight: tf.Tensor) -> tf.Tensor:
    """Soft targets: `weight * label + partner_weight * partner_label`."""
    return weight * label + partner_weight * partner_label


def mix_batch(images: tf.Tensor, labels: tf.Tensor, plan: MixPlan, both: bool) -> tuple[
        tf.Tensor, tf.Tensor]:
    """Applies a plan to a whole `[b, H, W, C]` batch and `[b, classes]` labels, in batch order.

    The reference form (the pipeline mixes pair by pair, with the same result).
    """
    partner = tf.constant(partners(images.shape[0], both))
    height, width, channels = images.shape[1:]
    masks = tf.map_fn(lambda box: box_mask(box, height, width, channels), plan.box,
                      fn_output_signature=tf.float32)
    cut = plan.is_cutmix[:, None, None, None]
    lam = plan.mixup_weight[:, None, None, None]
    others = tf.gather(images, partner)
    mixed = tf.where(cut, (1.0 - masks) * images + masks * others,
                     images * lam + others * (1.0 - lam))
    return mixed, mix_labels(labels, tf.gather(labels, partner), plan.label_weight[:, None],
                             plan.partner_label_weight[:, None])
