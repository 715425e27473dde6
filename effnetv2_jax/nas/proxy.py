"""Proxy training of one candidate: a short real training run, plus its measured step time.

`train_candidate(config, workdir)` is what a search (NAS here, the compound-scaling grid search
elsewhere) calls for each network it scores. It does no training of its own: it runs
`effnetv2_jax.train.train_and_evaluate` on the given config, so a candidate is trained exactly
as `python -m effnetv2_jax.main` would train it (data pipeline, optimizer, EMA, checkpoints,
resume), just briefly. The search builds that config (reduced image size, one progressive stage,
a short budget); this module takes it as it is.

The figures of the paper's reward (EfficientNetV2, section 3.3):
  A  held-out top-1 of the trained candidate;
  S  the train step's wall time on the hardware the search runs on: the step compiled by
     `compile_train_steps` (the very executable training uses) is run on one fixed batch
     after a warm-up call, and S is the median of `timed_steps` calls, each waited for with
     `block_until_ready`. Input-pipeline time is excluded on purpose: S is the network's cost.
  P  trainable parameters (BN statistics excluded).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from effnetv2_jax.models.counting import count_flops
from effnetv2_jax import train as training  # the public train_and_evaluate / evaluate
from effnetv2_jax.train import sharding
from effnetv2_jax.train import run as run_setup
from effnetv2_jax.train.checkpoint import Checkpointer
from effnetv2_jax.train.compiled_steps import compile_train_steps, step_key

WARMUP_STEPS = 1   # the first call of an executable pays one-off allocation costs


class CandidateInterrupted(RuntimeError):
    """Training stopped before its last step (SIGTERM / preemption); the candidate is not done.

    Its checkpoint is in its workdir: calling `train_candidate` again resumes it.
    """


@dataclasses.dataclass(frozen=True)
class ProxyResult:
    """A candidate's proxy figures.

    accuracy: held-out top-1 in [0, 1]: of the EMA weights when the config keeps an EMA
      (`train.ema_decay > 0`, "eval/ema_top1"), else of the raw weights ("eval/top1").
    step_seconds: median train-step wall time in seconds, after compilation, at the last
      progressive stage's image size and the config's global batch.
    params: trainable parameter count.
    flops: multiply-adds per image of the forward pass at that image size (`count_flops`).
    """

    accuracy: float
    step_seconds: float
    params: int
    flops: int


def accuracy_key(config: ml_collections.ConfigDict) -> str:
    """The evaluation metric `ProxyResult.accuracy` reports for this config."""
    return "eval/ema_top1" if config.train.ema_decay > 0 else "eval/top1"


def _local_batch(run: run_setup.Run, stage, seed: int) -> dict[str, np.ndarray]:
    """This process's part of a train batch of `stage`'s compiled shapes (values do not change
    the step's time: the step has no data-dependent control flow)."""
    batch, image_size = sharding.check_batch_size(stage.batch_size, run.mesh), stage.image_size
    classes = run.metadata["num_classes"]
    rng = np.random.default_rng(seed)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)]
    images = rng.standard_normal((batch, image_size, image_size, 3), dtype=np.float32)
    return {"image": images, "label": labels}


def time_train_step(run: run_setup.Run, compiled: Mapping, timed_steps: int = 5) -> float:
    """Median wall time (seconds) of the last stage's compiled train step, after a warm-up.

    Args:
      run: from `run_setup.setup`; its state is consumed (the step donates it).
      compiled: from `compile_train_steps(run)`.
      timed_steps: calls to time (>= 1).
    """
    if timed_steps < 1:
        raise ValueError(f"timed_steps={timed_steps} must be >= 1")
    stage = run.stages[-1]
    step_fn = compiled[step_key(stage)]
    batch = sharding.global_batch(_local_batch(run, stage, run.config.seed), run.mesh)
    state = run.state
    for _ in range(WARMUP_STEPS):
        state, metrics = step_fn(state, batch)
        jax.block_until_ready((state, metrics))
    times = []
    for _ in range(timed_steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    if jax.process_count() > 1:
        # Every process must score the candidate identically (a search's next proposal
        # depends on it), so process 0's clock decides.
        seconds = float(multihost_utils.broadcast_one_to_all(np.float64(seconds)))
    return seconds


def _measure(config: ml_collections.ConfigDict, workdir: str,
             timed_steps: int) -> tuple[float, int, int, int]:
    """(step seconds, trainable params, MACs per image, total steps) of the config's network."""
    run = run_setup.setup(config, workdir)
    try:
        params = int(sum(np.size(x) for x in jax.tree.leaves(run.state.params)))
        size = run.stages[-1].image_size
        flops = count_flops(config.model.name, size, num_classes=run.metadata["num_classes"],
                            **run_setup.model_overrides(config))
        compiled = compile_train_steps(run)
        seconds = time_train_step(run, compiled, timed_steps)
        return seconds, params, flops, run.total_steps
    finally:
        run.checkpointer.close()


def train_candidate(config: ml_collections.ConfigDict, workdir: str, *,
                    timed_steps: int = 5) -> ProxyResult:
    """Trains `config` (a full training config, e.g. from configs/quickstart.py with model.*
    overridden) briefly as configured and returns its proxy figures.

    Step time is measured first (the compilation it needs also fills the workdir's persistent
    compile cache, which training then reuses when `checkpoint.compile_cache_dir` allows it);
    then `train_and_evaluate` trains and evaluates. A workdir that already holds this
    candidate's checkpoints resumes it; a finished one is only evaluated again.

    Args:
      config: a training config with `mode = "train_and_eval"`.
      workdir: the candidate's own directory (checkpoints, summaries).
      timed_steps: train steps whose median is `step_seconds`.
    Raises:
      ValueError: the config does not evaluate (mode), or the model/config is invalid.
      CandidateInterrupted: training stopped early (SIGTERM); call again to resume.
      MemoryError, FloatingPointError: the candidate does not fit, or its loss diverged.
    """
    if config.mode != "train_and_eval":
        raise ValueError(f"train_candidate needs config.mode='train_and_eval' to measure "
                         f"held-out accuracy, got {config.mode!r}")
    start = time.perf_counter()
    seconds, params, flops, total_steps = _measure(config, workdir, timed_steps)
    results = training.train_and_evaluate(config, workdir)
    latest = _latest_step(workdir, config)
    if latest is None or latest < total_steps:
        raise CandidateInterrupted(f"training in {workdir} stopped at step {latest} of "
                                   f"{total_steps}; run again to resume it")
    if not results:  # already trained to the end by an earlier, interrupted search
        results = training.evaluate(config, workdir)
    key = accuracy_key(config)
    result = ProxyResult(accuracy=float(results[key]), step_seconds=seconds, params=params,
                         flops=flops)
    logging.info("candidate in %s: %s=%.4f, step %.4f s, %d params, %d MACs (%.1f s in all)",
                 workdir, key, result.accuracy, seconds, params, flops,
                 time.perf_counter() - start)
    return result


def _latest_step(workdir: str, config: ml_collections.ConfigDict) -> int | None:
    directory = os.path.join(workdir if "://" in workdir else os.path.abspath(workdir),
                             "checkpoints")
    checkpointer = Checkpointer(directory, keep_latest=config.checkpoint.keep_latest,
                                keep_best=config.checkpoint.keep_best, async_save=False)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()
