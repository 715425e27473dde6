"""The compiled steps of a training run: one train step per distinct (image size, dropout) of
the progressive stages and the eval step, each compiled ahead of time through the run's stored
traces (`exported_steps.py`) and checked to fit the device, or deferred to its first use when an
earlier process of the run already compiled and accepted it (a restart)."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from absl import logging

from effnetv2_jax.train import exported_steps, progressive, sharding
from effnetv2_jax.train.checkpoint import abstract_like
from effnetv2_jax.train.step import make_eval_step, make_train_step

if TYPE_CHECKING:
    from effnetv2_jax.train.loop import Run


def _abstract_batch(run: Run, size: int, batch: int, train: bool) -> dict:
    spec = sharding.batch_sharded(run.mesh)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32, sharding=spec)
    if train:
        return {"image": images, "label": jax.ShapeDtypeStruct(
            (batch, run.metadata["num_classes"]), jnp.float32, sharding=spec)}
    labels = (jax.ShapeDtypeStruct((batch, run.info.num_classes), jnp.float32, sharding=spec)
              if run.info.multi_label else  # multi-hot targets, as in training
              jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=spec))
    return {"image": images, "label": labels,
            "mask": jax.ShapeDtypeStruct((batch,), jnp.bool_, sharding=spec)}


def _check_fits(name: str, compiled) -> None:
    """Logs the executable's memory and fails now if it exceeds a device's memory."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return
    needed = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
              + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    logging.info("%s: %.1f MiB per device (temp %.1f MiB)", name, needed / 2**20,
                 analysis.temp_size_in_bytes / 2**20)
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if limit and needed > limit:
        raise MemoryError(f"{name} needs {needed / 2**30:.2f} GiB per device but the device has "
                          f"{limit / 2**30:.2f} GiB: lower train.global_batch_size or the "
                          f"stage's image size, or use model.dtype=bfloat16")


def _step_description(run: Run, **stage) -> dict:
    """What a traced step depends on beyond the sources and argument shapes (see
    `exported_steps.step_key`): the whole config, the data's sizes and the stage."""
    return {"metadata": run.metadata, "num_train_examples": run.info.num_train_examples,
            "total_steps": run.total_steps, **stage}


def compile_train_steps(run: Run, from_step: int = 0) -> exported_steps.LazySteps:
    """The train steps of the stages from `from_step` on, by (image size, dropout).

    Compiled ahead of time, so that a stage that cannot fit fails at start-up rather than
    hours later; except on a restart: a step whose stored artifact shows that an earlier
    process of this run compiled and accepted it compiles when its stage begins (unless that
    stage is the current one), and the steps of finished stages are not compiled at all. A
    restart thus loads one executable before its first step (about 4 s each for V2-S on this
    2-core CPU) instead of one per stage.
    """
    config, replicated = run.config, sharding.replicated(run.mesh)
    abstract_state = abstract_like(run.state, replicated)
    steps = exported_steps.LazySteps()
    current = progressive.stage_at(run.stages, min(from_step, run.total_steps - 1)).index
    for stage in run.stages:
        key = (stage.image_size, stage.dropout_rate)
        if stage.end_step <= from_step or key in steps:
            continue
        step_fn = make_train_step(
            run.graphdef, run.tx, learning_rate=run.learning_rate, seed=config.seed,
            dropout_rate=stage.dropout_rate, label_smoothing=config.train.label_smoothing,
            ema_max_decay=config.train.ema_decay, loss_type=config.train.loss,
            on_nonfinite=config.train.on_nonfinite)
        spec = dict(step_fn=step_fn, args=(abstract_state, _abstract_batch(
                        run, stage.image_size, config.train.global_batch_size, True)),
                    name=f"train_{stage.image_size}px",
                    description=_step_description(run, image_size=stage.image_size,
                                                  dropout_rate=stage.dropout_rate),
                    what=(f"stage {stage.index} ({stage.image_size} px, dropout "
                          f"{stage.dropout_rate:.3f}): train step"))
        _add(steps, key, run, spec, donate_first=True, deferrable=stage.index != current)
    return steps


def eval_steps(run: Run, *, deferrable: bool) -> exported_steps.LazySteps:
    """The eval step under the key "eval"; `deferrable` as for a later stage's train step."""
    eval_batch = run.config.eval.global_batch_size or run.config.train.global_batch_size
    spec = dict(step_fn=make_eval_step(run.graphdef, loss_type=run.config.train.loss),
                args=(abstract_like(run.state, sharding.replicated(run.mesh)),
                      _abstract_batch(run, run.eval_size, eval_batch, False)),
                name=f"eval_{run.eval_size}px",
                description=_step_description(run, eval_size=run.eval_size,
                                              eval_batch=eval_batch),
                what=f"eval step ({run.eval_size} px)")
    steps = exported_steps.LazySteps()
    _add(steps, "eval", run, spec, donate_first=False, deferrable=deferrable)
    return steps


def _add(steps: exported_steps.LazySteps, key, run: Run, spec: dict, *, donate_first: bool,
         deferrable: bool) -> None:
    """Adds the step `spec` describes: compiled now, or at its first lookup if `deferrable`
    and stored by an earlier process (hence known to compile and fit)."""
    defer = deferrable and exported_steps.is_stored(spec["name"], spec["description"],
                                                    spec["args"], run.compile_cache_dir)
    if defer:
        logging.info("%s: compiled by an earlier process of this run; loading it when first "
                     "needed", spec["what"])
    steps.add(key, functools.partial(_compile, run, donate_first=donate_first, **spec),
              now=not defer)


def _compile(run: Run, *, step_fn, args, name: str, description: dict, what: str,
             donate_first: bool) -> exported_steps.CompiledStep:
    """`step_fn` compiled for `args` through the run's stored artifacts, checked to fit."""
    start = time.perf_counter()
    step, stored = exported_steps.compile_step(
        step_fn, args, name=name, out_sharding=sharding.replicated(run.mesh),
        donate_first=donate_first, description=description, cache_dir=run.compile_cache_dir,
        accept=lambda compiled: _check_fits(what, compiled))
    logging.info("%s compiled in %.1f s%s", what, time.perf_counter() - start,
                 " (stored trace)" if stored else "")
    return step
