"""Optimizer and learning-rate schedule with the official semantics, built from optax parts.

RMSProp as TF1 had it (official `utils.py`, `hparams.py`): `ms <- 0.9 ms + 0.1 g^2` with `ms` starting at ONE,
`mom <- 0.9 mom + lr g / sqrt(ms + 1e-3)`, `w <- w - mom`. That is
`optax.rmsprop(lr, decay=0.9, eps=1e-3, initial_scale=1.0, eps_in_sqrt=True, momentum=0.9)`.
Weight decay is the coupled L2 of the official code (`loss += wd * sum(w^2) / 2` over kernels
only, not biases or BN), i.e. `wd * w` added to the gradient before RMSProp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("exponential", "cosine", "constant")
OPTIMIZERS = ("rmsprop", "sgd", "adamw")


def learning_rate_schedule(*, base_lr: float, global_batch_size: int, steps_per_epoch: float,
                           total_steps: int, schedule: str = "exponential",
                           warmup_epochs: float = 5.0, decay_epochs: float = 2.4,
                           decay_factor: float = 0.97, min_lr: float = 0.0,
                           stages=None) -> optax.Schedule:
    """Peak lr = base_lr * global_batch_size / 256, as the official `WarmupLearningRateSchedule`.

    The decay is a function of the global step from step 0; the warmup (peak * step / warmup
    steps) overrides it while step < warmup steps, so after S's 5 warmup epochs the exponential
    lr is already 0.256 * 0.97^2. "exponential": staircase `decay_factor` every `decay_epochs`.
    "cosine": 0.5 * peak * (1 + cos(pi * step / total_steps)). "constant": the peak. The result
    is floored at `min_lr`.

    `stages` (progressive stages with their own batches, `progressive.make_stages`): within a
    stage the peak is base_lr * its batch / 256, and the schedule's position is the examples
    seen before the step over `global_batch_size` (the reference batch that
    `steps_per_epoch` and `total_steps` count), so warmup and decay keep their length in
    epochs whatever the stages' batches.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r} (valid: {', '.join(SCHEDULES)})")
    peak = base_lr * global_batch_size / 256.0
    if stages:  # the run's length in reference steps: all its examples / the reference batch
        last = stages[-1]
        total_steps = (last.start_example + (last.end_step - last.start_step)
                       * last.batch_size) / global_batch_size
    warmup_steps = int(warmup_epochs * steps_per_epoch)
    if schedule == "exponential":
        decayed = optax.exponential_decay(peak, transition_steps=decay_epochs * steps_per_epoch,
                                          decay_rate=decay_factor, staircase=True)
    elif schedule == "cosine":
        decayed = optax.cosine_decay_schedule(peak, max(total_steps, 1))
    else:
        decayed = optax.constant_schedule(peak)

    def shape(step):  # at the reference batch
        warm = peak * step / max(warmup_steps, 1)
        return jnp.where(step < warmup_steps, warm, decayed(step))

    if not stages:
        return lambda step: jnp.maximum(shape(step), min_lr)
    starts = jnp.asarray([s.start_step for s in stages])
    # Per stage: position at its start and per step, in reference steps; lr scale.
    offsets = jnp.asarray([s.start_example / global_batch_size for s in stages], jnp.float32)
    rates = jnp.asarray([s.batch_size / global_batch_size for s in stages], jnp.float32)

    def staged(step):
        i = jnp.clip(jnp.searchsorted(starts, step, side="right") - 1, 0, len(stages) - 1)
        position = offsets[i] + (step - starts[i]).astype(jnp.float32) * rates[i]
        return jnp.maximum(rates[i] * shape(position), min_lr)

    return staged


def kernel_mask(params):
    """True for conv / depthwise / SE / dense kernels: the official L2 skips bias, gamma, beta
    (name regex `.*(bias|gamma|beta).*`), which are our `bias` and `scale`.

    Works on an `nnx.State` (whose leaf paths end in `.value`) and on plain nested dicts.
    """
    def is_kernel(path, _):
        names = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
        return bool(names) and names[-1] == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(*, learning_rate, optimizer: str = "rmsprop", weight_decay: float = 1e-5,
                   grad_clip_norm: float = 0.0, momentum: float = 0.9, rms_decay: float = 0.9,
                   epsilon: float = 1e-3) -> optax.GradientTransformation:
    """The official RMSProp (or SGD / AdamW) with coupled L2 on kernels and optional clipping.

    Args:
      learning_rate: a float or an optax schedule of the optimizer step.
      weight_decay: L2 coefficient (1e-5 official); applied to kernels only.
      grad_clip_norm: clip the global gradient norm to this (0 = off, the official default).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r} (valid: {', '.join(OPTIMIZERS)})")
    parts = []
    if grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    if optimizer == "adamw":
        parts.append(optax.adamw(learning_rate, weight_decay=weight_decay, mask=kernel_mask))
        return optax.chain(*parts)
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay, mask=kernel_mask))
    if optimizer == "rmsprop":
        parts.append(optax.rmsprop(learning_rate, decay=rms_decay, eps=epsilon, initial_scale=1.0,
                                   eps_in_sqrt=True, momentum=momentum))
    else:
        parts.append(optax.sgd(learning_rate, momentum=momentum or None))
    return optax.chain(*parts)
