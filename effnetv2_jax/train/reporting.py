"""Metrics, progress and summaries through CLU: log lines, and TensorBoard events from process 0."""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging
from clu import parameter_overview

from effnetv2_jax._extras import require
from effnetv2_jax.train.progressive import Stage

# CLU's summary writers (which periodic_actions imports) are TensorFlow's.
metric_writers = require("clu.metric_writers", "data")
periodic_actions = require("clu.periodic_actions", "data")

from effnetv2_jax.train.summaries import EventFileWriter  # noqa: E402 (needs `data`, checked above)


class Reporter:
    """Collects per-step metrics without blocking the device, and writes them every N steps.

    Train metrics stay device arrays until a log step, so the host never waits on the step it
    just dispatched. Images/s counts only time spent in training steps since the last log
    (compilation happens ahead of time; evaluation time is excluded).
    """

    def __init__(self, workdir: str, *, total_steps: int, log_every_steps: int,
                 global_batch_size: int, macs_per_image: dict[int, int] | None = None,
                 profile_steps: int = 0):
        # Log lines on every process; TensorBoard events from process 0, through epath, so a
        # gs:// workdir needs nothing of TensorFlow's file layer (train/summaries.py).
        writers = [metric_writers.LoggingWriter()]
        if jax.process_index() == 0:
            writers.append(EventFileWriter(workdir))
        self.writer = metric_writers.AsyncMultiWriter(writers)
        self.progress = periodic_actions.ReportProgress(
            num_train_steps=total_steps, writer=self.writer, every_steps=log_every_steps)
        self.profile = (periodic_actions.Profile(num_profile_steps=profile_steps, logdir=workdir)
                        if profile_steps and jax.process_index() == 0 else None)
        self.log_every_steps = log_every_steps
        self.global_batch_size = global_batch_size
        self.macs_per_image = macs_per_image or {}
        self.pending: list[dict] = []
        self.window_start = time.perf_counter()
        self.paused = 0.0

    def step_done(self, step: int, metrics: dict, image_size: int) -> None:
        """Called after dispatching the step that produced global step `step`."""
        self.pending.append(metrics)
        self.progress(step)
        if self.profile is not None:
            self.profile(step)
        if step % self.log_every_steps == 0:
            self.flush(step, image_size)

    def flush(self, step: int, image_size: int) -> None:
        if not self.pending:
            return
        fetched = jax.device_get(self.pending)
        elapsed = max(time.perf_counter() - self.window_start - self.paused, 1e-9)
        scalars = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        images_per_second = len(fetched) * self.global_batch_size / elapsed
        scalars["train/images_per_second"] = images_per_second
        macs = self.macs_per_image.get(image_size)
        if macs:  # forward + backward = 3x the forward multiply-adds, 2 FLOPs each
            scalars["train/model_tflops_per_second"] = images_per_second * 6 * macs / 1e12
        self.writer.write_scalars(step, scalars)
        self.pending = []
        self.window_start, self.paused = time.perf_counter(), 0.0

    def pause(self, seconds: float) -> None:
        """Excludes time spent outside training steps (evaluation, stage changes)."""
        self.paused += seconds

    def stage_started(self, step: int, stage: Stage, images: np.ndarray | None) -> None:
        self.writer.write_scalars(step, {
            "stage/index": stage.index, "stage/image_size": stage.image_size,
            "stage/randaug_magnitude": stage.randaug_magnitude,
            "stage/mixup_alpha": stage.mixup_alpha, "stage/cutmix_alpha": stage.cutmix_alpha,
            "stage/dropout_rate": stage.dropout_rate})
        if images is not None:
            shown = images[:8].astype(np.float32)
            low, high = shown.min(), shown.max()
            self.writer.write_images(step, {"train/augmented_batch":
                                            (shown - low) / max(high - low, 1e-6)})

    def parameter_overview(self, params) -> None:
        if jax.process_index() == 0:
            logging.info("parameters:\n%s", parameter_overview.get_parameter_overview(params))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self.writer.write_scalars(step, scalars)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
