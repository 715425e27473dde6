"""The compiled steps of a training run: one train step per distinct (image size, dropout) of
the progressive stages and the eval step, each compiled ahead of time through the run's stored
traces (`exported_steps.py`) and checked to fit the device, or deferred to its first use when an
earlier process of the run already compiled and accepted it (a restart)."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Hashable

import jax
import jax.numpy as jnp
from absl import logging

from effnetv2_jax.train import exported_steps, progressive, sharding, topology
from effnetv2_jax.train.checkpoint import abstract_like
from effnetv2_jax.train.run import Run
from effnetv2_jax.train.step import make_eval_step, make_train_step


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


def memory_needed(analysis) -> int:
    """Bytes per device an executable holds at its peak: arguments + outputs + temporaries,
    less what outputs reuse of donated arguments."""
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def device_memory(mesh: jax.sharding.Mesh) -> float | None:
    """Memory of one of the mesh's devices, bytes: what the runtime reports for this job's
    devices, the chip table's HBM for a described TPU slice (`topology.py`), None if unknown
    (XLA:CPU reports nothing)."""
    device = mesh.devices.flat[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - not addressable: a described topology
        stats = {}
    return stats.get("bytes_limit") or topology.memory_of_kind(device.device_kind)


def _check_fits(name: str, compiled, mesh: jax.sharding.Mesh, advice: str) -> None:
    """Logs the executable's memory and fails now if it exceeds a device's memory."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return
    needed = memory_needed(analysis)
    logging.info("%s: %.1f MiB per device (temp %.1f MiB)", name, needed / 2**20,
                 analysis.temp_size_in_bytes / 2**20)
    limit = device_memory(mesh)
    if limit and needed > limit:
        raise MemoryError(f"{name} needs {needed / 2**30:.2f} GiB per device but the device has "
                          f"{limit / 2**30:.2f} GiB: {advice}")


def fit_advice(remat: bool, dtype: str) -> str:
    """What would make a step that does not fit fit, given the model's `remat` and `dtype`."""
    remedies = ["lower train.global_batch_size or the stage's progressive.global_batch_sizes "
                "entry (or the stage's image size)"]
    if not remat:
        remedies.append("set model.remat=True (recompute each block in the backward)")
    if dtype != "bfloat16":
        remedies.append("use model.dtype=bfloat16")
    if len(remedies) == 1:
        remedies.append("use more chips (a larger slice, or --slices)")
    return ", ".join(remedies[:-1]) + ", or " + remedies[-1]


def _step_description(run: Run, **stage) -> dict:
    """What a traced step depends on beyond the sources and argument shapes (see
    `exported_steps.step_key`): the whole config, the data's sizes and the stage."""
    return {"metadata": run.metadata, "num_train_examples": run.info.num_train_examples,
            "total_steps": run.total_steps, **stage}


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """One step to compile: `step_fn(*args)`, args abstract (ShapeDtypeStructs + shardings).

    Attributes:
      key: its key in the run's steps ((image size, dropout) for a train step, "eval").
      name: file-name-safe name ("train_171px").
      description: what the traced program depends on (`exported_steps.step_key`).
      what: for messages ("stage 0 (171 px, dropout 0.100): train step").
      stage: the progressive stage's index, None for the eval step.
      image_size: pixels; batch: global batch, images.
      donate_first: the first argument (the train state) is donated.
    """

    key: Hashable
    step_fn: Callable
    args: tuple
    name: str
    description: dict
    what: str
    stage: int | None
    image_size: int
    batch: int
    donate_first: bool


def step_key(stage: progressive.Stage) -> tuple:
    """A stage's train step in the run's steps: stages that share it share the program."""
    return (stage.image_size, stage.dropout_rate, stage.batch_size)


def train_step_specs(run: Run, from_step: int = 0) -> list[StepSpec]:
    """The train steps of the stages from `from_step` on, one per distinct (image size,
    dropout, global batch), in stage order."""
    config, replicated = run.config, sharding.replicated(run.mesh)
    abstract_state = abstract_like(run.state, replicated)
    specs, keys = [], set()
    for stage in run.stages:
        key = step_key(stage)
        if stage.end_step <= from_step or key in keys:
            continue
        keys.add(key)
        step_fn = make_train_step(
            run.graphdef, run.tx, learning_rate=run.learning_rate, seed=config.seed,
            dropout_rate=stage.dropout_rate, label_smoothing=config.train.label_smoothing,
            ema_max_decay=config.train.ema_decay, loss_type=config.train.loss,
            on_nonfinite=config.train.on_nonfinite)
        batch = stage.batch_size
        own_batch = batch != config.train.global_batch_size  # progressive.global_batch_sizes
        specs.append(StepSpec(
            key=key, step_fn=step_fn,
            args=(abstract_state, _abstract_batch(run, stage.image_size, batch, True)),
            name=f"train_{stage.image_size}px" + (f"_{batch}b" if own_batch else ""),
            description=_step_description(run, image_size=stage.image_size,
                                          dropout_rate=stage.dropout_rate),
            what=(f"stage {stage.index} ({stage.image_size} px, dropout "
                  f"{stage.dropout_rate:.3f}" + (f", batch {batch}" if own_batch else "")
                  + "): train step"),
            stage=stage.index, image_size=stage.image_size, batch=batch, donate_first=True))
    return specs


def eval_step_spec(run: Run) -> StepSpec:
    """The eval step (key "eval") at the run's eval size and batch."""
    eval_batch = run.config.eval.global_batch_size or run.config.train.global_batch_size
    return StepSpec(
        key="eval", step_fn=make_eval_step(run.graphdef, loss_type=run.config.train.loss),
        args=(abstract_like(run.state, sharding.replicated(run.mesh)),
              _abstract_batch(run, run.eval_size, eval_batch, False)),
        name=f"eval_{run.eval_size}px",
        description=_step_description(run, eval_size=run.eval_size, eval_batch=eval_batch),
        what=f"eval step ({run.eval_size} px)", stage=None, image_size=run.eval_size,
        batch=eval_batch, donate_first=False)


def compile_train_steps(run: Run, from_step: int = 0) -> exported_steps.LazySteps:
    """The train steps of the stages from `from_step` on, by (image size, dropout).

    Compiled ahead of time, so that a stage that cannot fit fails at start-up rather than
    hours later; except on a restart: a step whose stored artifact shows that an earlier
    process of this run compiled and accepted it compiles when its stage begins (unless that
    stage is the current one), and the steps of finished stages are not compiled at all. A
    restart thus loads one executable before its first step instead of one per stage.
    """
    steps = exported_steps.LazySteps()
    current = progressive.stage_at(run.stages, min(from_step, run.total_steps - 1)).index
    for spec in train_step_specs(run, from_step):
        _add(steps, run, spec, deferrable=spec.stage != current)
    return steps


def eval_steps(run: Run, *, deferrable: bool) -> exported_steps.LazySteps:
    """The eval step under the key "eval"; `deferrable` as for a later stage's train step."""
    steps = exported_steps.LazySteps()
    _add(steps, run, eval_step_spec(run), deferrable=deferrable)
    return steps


def _add(steps: exported_steps.LazySteps, run: Run, spec: StepSpec, *,
         deferrable: bool) -> None:
    """Adds the step `spec` describes: compiled now, or at its first lookup if `deferrable`
    and stored by an earlier process (hence known to compile and fit)."""
    defer = deferrable and exported_steps.is_stored(spec.name, spec.description, spec.args,
                                                    run.compile_cache_dir)
    if defer:
        logging.info("%s: compiled by an earlier process of this run; loading it when first "
                     "needed", spec.what)
    steps.add(spec.key, functools.partial(compile_spec, run, spec), now=not defer)


def compile_spec(run: Run, spec: StepSpec, accept=None) -> exported_steps.CompiledStep:
    """`spec`'s step compiled through the run's stored artifacts; `accept(compiled)` (default:
    it must fit a device) may refuse it by raising."""
    start = time.perf_counter()
    step, stored = exported_steps.compile_step(
        spec.step_fn, spec.args, name=spec.name, out_sharding=sharding.replicated(run.mesh),
        donate_first=spec.donate_first, description=spec.description,
        cache_dir=run.compile_cache_dir,
        accept=accept or (lambda compiled: _check_fits(spec.what, compiled, run.mesh,
                                                       fit_advice(run.config.model.remat,
                                                                  run.config.model.dtype))))
    logging.info("%s compiled in %.1f s%s", spec.what, time.perf_counter() - start,
                 " (stored trace)" if stored else "")
    return step
