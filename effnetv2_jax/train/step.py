"""The jitted train and eval steps (pure functions of the state and a batch).

Batches are global arrays sharded over the mesh's "data" axis; the state is replicated. Under
`jax.jit` BN statistics are over the whole global batch (XLA inserts the cross-device mean); the
model's BN `groups` setting gives per-device or grouped statistics instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from effnetv2_jax.train.state import TrainState, ema_decay, ema_update, merge_model

LOSSES = ("softmax", "sigmoid")
NONFINITE_ACTIONS = ("stop", "skip")  # train.on_nonfinite


def classification_loss(logits: jax.Array, labels: jax.Array, loss_type: str,
                        label_smoothing: float = 0.0) -> jax.Array:
    """Per-example loss [batch] of logits and float32 targets [batch, classes].

    "softmax": cross-entropy against a target distribution (one-hot, mixed, or a normalised
    multi-hot), smoothed as the official code does: y * (1 - a) + a / classes.
    "sigmoid": binary cross-entropy per class, averaged over classes like TF's
    `sigmoid_cross_entropy` (official `loss_type='sigmoid'`, used for the published
    ImageNet-21k weights) on 0/1 multi-hot targets, smoothed as TF does: y * (1 - a) + a / 2.
    """
    if loss_type == "softmax":
        targets = optax.smooth_labels(labels, label_smoothing) if label_smoothing else labels
        return optax.softmax_cross_entropy(logits, targets)
    if loss_type == "sigmoid":
        targets = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1)
    raise ValueError(f"unknown loss_type {loss_type!r} (valid: {', '.join(LOSSES)})")


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                    learning_rate, seed: int, dropout_rate: float,
                    label_smoothing: float = 0.1, ema_max_decay: float = 0.9999,
                    loss_type: str = "softmax", on_nonfinite: str = "stop"):
    """Builds `train_step(state, batch) -> (state, metrics)`.

    batch: {"image": float32/bfloat16 [batch, size, size, 3] normalised,
            "label": float32 [batch, classes] soft targets (mixup/cutmix already applied)}.
    The step's randomness is `fold_in(key(seed), step)`: a pure function of the global step,
    so an interrupted and resumed run draws exactly the same dropout and drop-path masks.

    A non-finite loss or gradient norm skips the update (metric "nonfinite" is 1 for that
    step). on_nonfinite="stop" records the first such step in `state.nonfinite_step` and skips
    every later update, so the state stays the last good one until the loop stops; "skip"
    records the latest such step and applies the later finite updates.
    """
    if on_nonfinite not in NONFINITE_ACTIONS:
        raise ValueError(f"on_nonfinite={on_nonfinite!r} is not one of {NONFINITE_ACTIONS}")

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.key(seed), state.step)
        labels = batch["label"].astype(jnp.float32)

        def loss_fn(params):
            model = merge_model(graphdef, params, state.batch_stats)
            logits = model(batch["image"], train=True, key=key, dropout_rate=dropout_rate)
            # Smoothing after mixup/cutmix mixing, as the official code does.
            loss = classification_loss(logits, labels, loss_type, label_smoothing).mean()
            return loss, (logits, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay(state.step, ema_max_decay)
        updated = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, decay),
            ema_batch_stats=ema_update(state.ema_batch_stats, batch_stats, decay))

        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        apply = finite & (state.nonfinite_step < 0) if on_nonfinite == "stop" else finite
        # "stop" keeps the first bad step (the one to report); "skip" the latest.
        first = (state.nonfinite_step < 0) if on_nonfinite == "stop" else ~finite
        skipped = state.replace(
            step=state.step + 1,
            nonfinite_step=jnp.where(first, state.step, state.nonfinite_step))
        new_state = jax.tree.map(lambda a, b: jnp.where(apply, a, b), updated, skipped)

        top1 = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))
        metrics = {"loss": loss, "top1": top1, "grad_norm": grad_norm,
                   "nonfinite": 1.0 - finite.astype(jnp.float32),
                   "learning_rate": learning_rate(state.step) if callable(learning_rate)
                   else jnp.asarray(learning_rate, jnp.float32)}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_type: str = "softmax"):
    """Builds `eval_step(state, batch) -> sums` for raw and EMA weights.

    batch: {"image": [batch, size, size, 3], "label": int32 [batch] (one class per image) or
    float32 [batch, classes] multi-hot targets (multi-label data), "mask": bool [batch]}
    (padded examples have mask False and count nowhere). Returns sums over the batch:
    count, and for prefix in (raw, ema): {prefix}_loss, {prefix}_top1, {prefix}_top5. With
    multi-label targets a prediction is correct when it is one of the image's labels.
    """

    def eval_step(state: TrainState, batch):
        mask = batch["mask"].astype(jnp.float32)
        multi_label = batch["label"].ndim == 2
        sums = {"count": mask.sum()}
        for prefix, params, stats in (("raw", state.params, state.batch_stats),
                                      ("ema", state.ema_params, state.ema_batch_stats)):
            logits = merge_model(graphdef, params, stats)(batch["image"]).astype(jnp.float32)
            top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
            if multi_label:
                targets = batch["label"].astype(jnp.float32)
                loss = classification_loss(logits, targets, loss_type)
                hits = jnp.take_along_axis(targets, top5, axis=-1) > 0  # [batch, 5]
            else:
                labels = batch["label"].astype(jnp.int32)
                loss = classification_loss(
                    logits, jax.nn.one_hot(labels, logits.shape[-1]), loss_type)
                hits = top5 == labels[:, None]
            sums[f"{prefix}_loss"] = (loss * mask).sum()
            sums[f"{prefix}_top1"] = (hits[:, 0] * mask).sum()
            sums[f"{prefix}_top5"] = (jnp.any(hits, -1) * mask).sum()
        return sums

    return eval_step
