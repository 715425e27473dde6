"""The training state: one pytree of plain nested dicts of arrays, easy to shard and checkpoint.

Parameters and BN statistics are `nnx.to_pure_dict` trees of the model's `nnx.Param` and
`nnx.BatchStat` state; the static rest of the model is the `GraphDef`, kept outside the state.
The EMA covers parameters and BN statistics, as the official `ExponentialMovingAverage` does.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly.

    Attributes:
      step: int32 scalar, optimizer updates applied so far (the global step).
      params: trainable parameters (float32).
      batch_stats: BN moving mean / variance (float32).
      opt_state: the optax state of `params`.
      ema_params, ema_batch_stats: exponential moving averages of the two above.
      nonfinite_step: int32 scalar, the first step whose loss or gradient norm was not finite
        (its update was skipped), or -1.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any
    nonfinite_step: jax.Array


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict, dict]:
    """model -> (graphdef, params, batch_stats) with plain-dict trees."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def merge_model(graphdef: nnx.GraphDef, params, batch_stats) -> nnx.Module:
    """The inverse of `split_model`; safe inside jit and grad (it creates fresh Variables)."""
    return nnx.merge(graphdef, nnx.State(params), nnx.State(batch_stats))


def create_train_state(params, batch_stats, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0. The EMA starts as a copy (never an alias: the state is donated)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params),
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        nonfinite_step=jnp.full((), -1, jnp.int32))


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
    """`min(decay, (1 + t) / (10 + t))`: TF's ExponentialMovingAverage with num_updates=t."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, new, decay: jax.Array):
    return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)
