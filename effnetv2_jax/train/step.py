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


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                    learning_rate, seed: int, dropout_rate: float,
                    label_smoothing: float = 0.1, ema_max_decay: float = 0.9999):
    """Builds `train_step(state, batch) -> (state, metrics)`.

    batch: {"image": float32/bfloat16 [batch, size, size, 3] normalised,
            "label": float32 [batch, classes] soft targets (mixup/cutmix already applied)}.
    The step's randomness is `fold_in(key(seed), step)`: a pure function of the global step,
    so an interrupted and resumed run draws exactly the same dropout and drop-path masks.
    A non-finite loss or gradient norm skips the update and records the step.
    """

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.key(seed), state.step)
        labels = batch["label"].astype(jnp.float32)

        def loss_fn(params):
            model = merge_model(graphdef, params, state.batch_stats)
            logits = model(batch["image"], train=True, key=key, dropout_rate=dropout_rate)
            # Official: y * (1 - a) + a / K, after mixup/cutmix mixing.
            targets = optax.smooth_labels(labels, label_smoothing) if label_smoothing else labels
            loss = optax.softmax_cross_entropy(logits, targets).mean()
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
        skipped = state.replace(
            step=state.step + 1,
            nonfinite_step=jnp.where(state.nonfinite_step < 0, state.step,
                                     state.nonfinite_step))
        new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), updated, skipped)

        top1 = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))
        metrics = {"loss": loss, "top1": top1, "grad_norm": grad_norm,
                   "learning_rate": learning_rate(state.step) if callable(learning_rate)
                   else jnp.asarray(learning_rate, jnp.float32)}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef):
    """Builds `eval_step(state, batch) -> sums` for raw and EMA weights.

    batch: {"image": [batch, size, size, 3], "label": int32 [batch], "mask": bool [batch]}
    (padded examples have mask False and count nowhere). Returns sums over the batch:
    count, and for prefix in (raw, ema): {prefix}_loss, {prefix}_top1, {prefix}_top5.
    """

    def eval_step(state: TrainState, batch):
        mask = batch["mask"].astype(jnp.float32)
        labels = batch["label"].astype(jnp.int32)
        sums = {"count": mask.sum()}
        for prefix, params, stats in (("raw", state.params, state.batch_stats),
                                      ("ema", state.ema_params, state.ema_batch_stats)):
            logits = merge_model(graphdef, params, stats)(batch["image"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
            sums[f"{prefix}_loss"] = (loss * mask).sum()
            sums[f"{prefix}_top1"] = ((top5[:, 0] == labels) * mask).sum()
            sums[f"{prefix}_top5"] = (jnp.any(top5 == labels[:, None], -1) * mask).sum()
        return sums

    return eval_step
