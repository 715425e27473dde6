"""`train_and_evaluate(config, workdir)`: the whole training run, importable from a notebook.

Order of events: validate the config -> (multi-host) initialise -> data info -> model, optimizer
and state on the mesh -> restore the newest intact checkpoint -> compile every progressive stage
ahead of time (a restart: what it needs now; the later stages' steps as they begin) -> train,
evaluating and checkpointing as configured -> final save and evaluation.
The stage is a function of the global step, so a restarted run continues in the right stage
with the right input pipeline and executable, and (data and randomness being functions of the
step) produces bitwise the parameters an uninterrupted run would. A SIGTERM is recorded from
before set-up (`train/preemption.py`): during start-up the run stops before its next phase
with nothing written, during training it saves the step it finished and stops.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from effnetv2_jax import data
from effnetv2_jax.models.counting import count_flops
from effnetv2_jax.progress import progress
from effnetv2_jax.train import progressive, sharding
from effnetv2_jax.train.checkpoint import Checkpointer
from effnetv2_jax.train.compiled_steps import compile_train_steps, eval_steps, step_key
from effnetv2_jax.train.preemption import Preemption
from effnetv2_jax.train.reporting import Reporter
from effnetv2_jax.train.run import Run, model_overrides, setup
from effnetv2_jax.train.state import TrainState

__all__ = ["evaluate", "evaluate_run", "run_evaluation", "train_and_evaluate"]


def run_evaluation(run: Run, eval_step, state: TrainState) -> dict[str, float]:
    """Evaluates every example once (padded batches are masked) with raw and EMA weights."""
    batch = run.config.eval.global_batch_size or run.config.train.global_batch_size
    totals: dict[str, float] = {}
    iterator = data.make_eval_iterator(
        run.data_config, run.preprocess, image_size=run.eval_size, global_batch_size=batch,
        process_index=jax.process_index(), process_count=jax.process_count())
    batches = sharding.prefetch_to_mesh(iterator, run.mesh, run.config.train.device_prefetch)
    total = len(iterator) if hasattr(iterator, "__len__") else None
    try:
        for _, global_batch in progress(batches, total=total, desc="eval", unit="batch",
                                        leave=False):
            sums = jax.device_get(eval_step(state, global_batch))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
    finally:
        batches.close()
        getattr(iterator, "close", lambda: None)()
    count = max(totals.pop("count", 0.0), 1.0)
    results = {f"eval/{k}": v / count for k, v in totals.items()}
    results["eval/examples"] = count
    return results


class _FiniteCheck:
    """Reads `state.nonfinite_step` (a host sync, so only at log and save steps).

    on_nonfinite="stop": raises naming the first bad step; nothing after it is saved (the
    train step stopped updating there). "skip": warns once per newly skipped step.
    """

    def __init__(self, on_nonfinite: str, checkpointer: Checkpointer):
        self.on_nonfinite, self.checkpointer = on_nonfinite, checkpointer
        self.reported = -1

    def start(self, state: TrainState) -> TrainState:
        """The state to train from. A restored step skipped under "skip" is history (already
        reported); under "stop" it would freeze every update, so it is cleared."""
        self.reported = int(jax.device_get(state.nonfinite_step))
        if self.reported >= 0 and self.on_nonfinite == "stop":
            logging.info("step %d was skipped as non-finite before this resume", self.reported)
            self.reported = -1
            state = state.replace(nonfinite_step=jax.device_put(
                jnp.full_like(state.nonfinite_step, -1), state.nonfinite_step.sharding))
        return state

    def __call__(self, state: TrainState) -> None:
        bad = int(jax.device_get(state.nonfinite_step))
        if bad < 0 or bad == self.reported:
            return
        if self.on_nonfinite == "skip":
            logging.warning("the loss or gradient was non-finite at step %d: its update was "
                            "skipped (train.on_nonfinite=skip; the metric train/nonfinite "
                            "counts skipped steps)", bad)
            self.reported = bad
            return
        raise FloatingPointError(
            f"the loss or gradient became non-finite at step {bad}; its update and all later "
            f"ones were skipped and nothing after it was saved. The last good checkpoint is "
            f"step {self.checkpointer.latest_step()} in {self.checkpointer.directory}. Lower "
            f"train.base_lr, set train.grad_clip_norm, check the data, or set "
            f"train.on_nonfinite=skip to skip such steps and continue.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from `workdir` if it holds checkpoints) and evaluates.

    Returns the last evaluation's metrics (empty if mode is "train").
    """
    if config.mode == "eval":
        return evaluate_run(setup(config, workdir))
    # Before set-up: a SIGTERM from here on stops the run cleanly (train/preemption.py).
    preemption = Preemption()
    try:
        run = setup(config, workdir)
        preemption.attach()
        return _train(run, workdir, preemption)
    finally:
        preemption.restore()


def _stop_before_training(run: Run, preemption: Preemption, start_step: int,
                          phase: str) -> bool:
    """During start-up, a SIGTERM stops the run before its next phase, with nothing new to
    save (several processes instead save together after the first step, as JAX's sync
    service decides)."""
    if preemption.distributed or not preemption.requested or start_step >= run.total_steps:
        return False
    logging.warning("preempted during start-up (%s): stopping before step %d, nothing new to "
                    "save", phase, start_step)
    run.checkpointer.close()
    return True


def _train(run: Run, workdir: str, preemption: Preemption) -> dict[str, float]:
    config = run.config
    start_step = int(jax.device_get(run.state.step))
    if _stop_before_training(run, preemption, start_step, "after set-up, before compiling"):
        return {}
    try:
        compiled = compile_train_steps(run, start_step)
        evals = (eval_steps(run, deferrable=True)
                 if config.mode == "train_and_eval" else None)
    except BaseException:
        _close_quietly(run.checkpointer.close)
        raise
    if _stop_before_training(run, preemption, start_step, "after compiling"):
        return {}
    checkpointer = run.checkpointer
    check_finite = _FiniteCheck(config.train.on_nonfinite, checkpointer)
    state = check_finite.start(run.state)
    reporter = Reporter(workdir, total_steps=run.total_steps,
                        log_every_steps=config.train.log_every_steps,
                        global_batch_size=config.train.global_batch_size,
                        macs_per_image={s.image_size: count_flops(
                            run.variant.name, s.image_size, **model_overrides(config),
                            num_classes=run.metadata["num_classes"]) for s in run.stages},
                        profile_steps=config.train.profile_steps)
    reporter.parameter_overview(state.params)
    iterator, batches, stage, results = None, None, None, {}
    evaluate_now = lambda step: config.mode == "train_and_eval" and (  # noqa: E731
        step == run.total_steps or step == progressive.stage_at(run.stages, step - 1).end_step
        or (config.eval.every_steps and step % config.eval.every_steps == 0))

    def save(step, metrics=None):
        check_finite(state)
        checkpointer.save(step, state, {**run.metadata, "step": step,
                                        "stage": progressive.stage_at(run.stages, step - 1).index},
                          metrics)

    try:
        for step in range(start_step, run.total_steps):
            if stage is None or step >= stage.end_step:
                paused = time.perf_counter()
                if iterator is not None:
                    batches.close()
                    iterator.close()
                stage = progressive.stage_at(run.stages, step)
                iterator = data.make_train_iterator(
                    run.data_config, run.preprocess, image_size=stage.image_size,
                    randaug_magnitude=stage.randaug_magnitude, mixup_alpha=stage.mixup_alpha,
                    cutmix_alpha=stage.cutmix_alpha, global_batch_size=stage.batch_size,
                    start_step=step, start_example=progressive.examples_before(run.stages, step),
                    seed=config.seed, process_index=jax.process_index(),
                    process_count=jax.process_count())
                # The next batches go to the devices while a step runs (train.device_prefetch).
                batches = sharding.prefetch_to_mesh(iterator, run.mesh,
                                                    config.train.device_prefetch)
                local, global_batch = next(batches)
                train_step = compiled[step_key(stage)]  # may load it
                reporter.global_batch_size = stage.batch_size  # images/s of this stage
                reporter.stage_started(step, stage, local["image"])
                logging.info("stage %d from step %d: %s", stage.index, step, stage)
                reporter.pause(time.perf_counter() - paused)
            else:
                _, global_batch = next(batches)
            state, metrics = train_step(state, global_batch)
            done = step + 1
            reporter.step_done(done, metrics, stage.image_size)
            if done % config.train.log_every_steps == 0:
                check_finite(state)
            if evaluate_now(done):
                paused = time.perf_counter()
                check_finite(state)
                results = run_evaluation(run, evals["eval"], state)
                reporter.write(done, results)
                save(done, {"ema_top1": results["eval/ema_top1"]})
                reporter.pause(time.perf_counter() - paused)
            elif done % config.checkpoint.every_steps == 0 or done == run.total_steps:
                save(done)
            if preemption.reached(done):
                save(done)
                logging.warning("preempted: saved step %d, exiting", done)
                break
        reporter.flush(run.total_steps, stage.image_size if stage else 0)
    except BaseException:
        # The error in flight is the one to report; a second one while closing (the same
        # full disk) is only logged.
        for close in (getattr(batches, "close", None), getattr(iterator, "close", None),
                      checkpointer.close, reporter.close):
            _close_quietly(close)
        raise
    if iterator is not None:
        batches.close()
        iterator.close()
    checkpointer.close()  # waits for the last asynchronous save; raises if it failed
    reporter.close()
    run.state = state
    return results


def _close_quietly(close) -> None:
    if close is None:
        return
    try:
        close()
    except Exception as error:  # noqa: BLE001 - secondary to the error being raised
        logging.error("while stopping after an error: %s: %s", type(error).__name__, error)


def evaluate_run(run: Run) -> dict[str, float]:
    """Evaluates the restored (or freshly initialised) state and writes the metrics."""
    if run.checkpointer.latest_step() is None:
        raise FileNotFoundError(f"mode=eval needs a checkpoint, and {run.checkpointer.directory} "
                                f"has none; train first or point --workdir at a trained run")
    results = run_evaluation(run, eval_steps(run, deferrable=False)["eval"], run.state)
    logging.info("evaluation at step %d: %s", int(run.state.step), results)
    run.checkpointer.close()
    return results


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Evaluates the latest checkpoint in `workdir`."""
    return evaluate_run(setup(config, workdir))
