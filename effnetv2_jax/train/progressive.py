"""Progressive learning (paper Algorithm 1): per-stage image size and regularisation.

Training is split into M stages of (about) N/M steps. In stage i every quantity moves linearly
from its first-stage to its last-stage value: value_i = first + (last - first) * i / (M - 1).
The stage is a pure function of the global step, so a resumed run lands in the right stage.

Each stage may train at its own global batch (`progressive.global_batch_sizes`, e.g. a smaller
one for the large images of the last stages). Then:
  * the examples seen before a step are the sum over the stages of steps x batch
    (`examples_before`); the input stream is a function of that position (and the seed), so
    a restart at any step continues exactly, and an epoch stays what it is without stages:
    num_train_examples consecutive examples of the stream, whatever batches carry them;
  * with the length in epochs, every stage trains num_epochs / M epochs (the paper's equal
    stages), so a stage's steps are its examples / its batch (`epoch_ends`); with the length
    in steps, every stage trains 1/M of the steps, as with one batch;
  * the learning rate follows the official rule per stage (peak = base_lr x batch / 256), and
    its warmup and decay run in epochs of examples seen (`optim.learning_rate_schedule`).

Two presets per model (paper Table 6 and official `main.py`):
  * "code"  - what google/automl `main.py` runs: first size 128 + (final - 128) / M, RandAugment
              5 -> ram, mixup = cutmix 0 -> alpha, constant dropout. S: 171, 214, 257, 300.
  * "paper" - Table 6 of the paper: size 128 -> final, RandAugment 5 -> 15/20/25, mixup only,
              dropout 0.1 -> 0.3/0.4/0.5.
"""

from __future__ import annotations

import dataclasses

PRESETS = ("code", "paper")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One progressive stage.

    Attributes:
      index: 0..M-1.
      start_step, end_step: global steps [start, end) trained in this stage.
      image_size: training resolution in pixels.
      randaug_magnitude: RandAugment magnitude (0 = off).
      mixup_alpha, cutmix_alpha: Beta-distribution alphas (0 = off).
      dropout_rate: dropout before the classifier.
      batch_size: global batch of this stage, images (0: not planned with batches).
      start_example: examples of the training stream seen before `start_step` (all
        processes).
    """

    index: int
    start_step: int
    end_step: int
    image_size: int
    randaug_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float
    dropout_rate: float
    batch_size: int = 0
    start_example: int = 0


@dataclasses.dataclass(frozen=True)
class Schedule:
    """First- and last-stage values; `make_stages` interpolates between them."""

    image_size: tuple[int, int]
    randaug_magnitude: tuple[float, float]
    mixup_alpha: tuple[float, float]
    cutmix_alpha: tuple[float, float]
    dropout_rate: tuple[float, float]


# Paper Table 6 (min = first stage, max = last stage).
_PAPER = {
    "efficientnetv2-s": Schedule((128, 300), (5, 15), (0, 0), (0, 0), (0.1, 0.3)),
    "efficientnetv2-m": Schedule((128, 380), (5, 20), (0, 0.2), (0, 0), (0.1, 0.4)),
    "efficientnetv2-l": Schedule((128, 380), (5, 25), (0, 0.4), (0, 0), (0.1, 0.5)),
}
# google/automl effnetv2_configs.py: (final train size, ram, mixup = cutmix alpha, dropout).
_CODE = {
    "efficientnetv2-s": (300, 10, 0.0, 0.2), "efficientnetv2-m": (384, 15, 0.2, 0.3),
    "efficientnetv2-l": (384, 20, 0.5, 0.4), "efficientnetv2-xl": (384, 20, 0.5, 0.4),
    "efficientnetv2-b0": (192, 0, 0.0, 0.2), "efficientnetv2-b1": (192, 0, 0.0, 0.2),
    "efficientnetv2-b2": (208, 0, 0.0, 0.3), "efficientnetv2-b3": (240, 0, 0.0, 0.3),
}


def preset(model_name: str, which: str, num_stages: int = 4, base_size: int = 128) -> Schedule:
    """The official schedule of a V2 model: `which` is "code" or "paper"."""
    if which == "paper":
        if model_name not in _PAPER:
            raise ValueError(f"the paper's Table 6 gives schedules for {sorted(_PAPER)}, not "
                             f"{model_name!r}; use preset 'code' or explicit values")
        return _PAPER[model_name]
    if which == "code":
        if model_name not in _CODE:
            raise ValueError(f"no official progressive schedule for {model_name!r} "
                             f"(known: {sorted(_CODE)})")
        final, ram, alpha, dropout = _CODE[model_name]
        first = int(base_size + (final - base_size) / num_stages)
        return Schedule((first, final), (5 if ram else 0, ram), (0, alpha), (0, alpha),
                        (dropout, dropout))
    raise ValueError(f"unknown progressive preset {which!r} (valid: {', '.join(PRESETS)})")


def _interpolate(first: float, last: float, index: int, num_stages: int) -> float:
    if num_stages == 1:
        return last
    return first + (last - first) * index / (num_stages - 1)


def epoch_ends(num_epochs: float, num_examples: int, batch_sizes) -> list[int]:
    """Stage end steps when every stage trains num_epochs / M epochs at its own batch: a
    stage's steps are its share of the examples over its batch (at least 1; the remainder
    carries to the next stage, so the run's total examples stay num_epochs x num_examples)."""
    num_stages, ends, step, seen = len(batch_sizes), [], 0, 0
    for i, batch in enumerate(batch_sizes):
        target = (i + 1) / num_stages * num_epochs * num_examples
        steps = max(1, int((target - seen) / batch))
        step, seen = step + steps, seen + steps * batch
        ends.append(step)
    return ends


def make_stages(schedule: Schedule, num_stages: int, total_steps: int, *,
                batch_sizes=(), ends=()) -> list[Stage]:
    """Splits `total_steps` into `num_stages` stages; stage i ends at int((i+1)/M * total).

    Args:
      batch_sizes: each stage's global batch (recorded with the examples seen before it);
        () leaves batch_size and start_example 0.
      ends: each stage's end step instead of the equal split (`epoch_ends`); the last must be
        `total_steps`.
    """
    if num_stages < 1:
        raise ValueError(f"progressive.num_stages must be >= 1, got {num_stages}")
    if total_steps < num_stages:
        raise ValueError(f"{total_steps} training steps cannot fill {num_stages} stages")
    ends = list(ends) or [int((i + 1) / num_stages * total_steps) for i in range(num_stages)]
    batches = list(batch_sizes) or [0] * num_stages
    if len(ends) != num_stages or len(batches) != num_stages or ends[-1] != total_steps:
        raise ValueError(f"{num_stages} stages need {num_stages} batch sizes and end steps "
                         f"ending at {total_steps}, got {batches} and {ends}")
    stages, start, seen = [], 0, 0
    for i in range(num_stages):
        value = lambda pair: _interpolate(pair[0], pair[1], i, num_stages)  # noqa: E731
        stages.append(Stage(
            index=i, start_step=start, end_step=ends[i],
            # int() truncates as the official code does (171.0 -> 171).
            image_size=int(value(schedule.image_size) + 1e-9),
            randaug_magnitude=float(value(schedule.randaug_magnitude)),
            mixup_alpha=float(value(schedule.mixup_alpha)),
            cutmix_alpha=float(value(schedule.cutmix_alpha)),
            dropout_rate=float(value(schedule.dropout_rate)),
            batch_size=batches[i], start_example=seen))
        seen += (ends[i] - start) * batches[i]
        start = ends[i]
    return stages


def examples_before(stages: list[Stage], step: int) -> int:
    """Examples of the training stream (all processes) seen before global step `step`."""
    stage = stage_at(stages, step)
    return stage.start_example + (step - stage.start_step) * stage.batch_size


def stage_at(stages: list[Stage], step: int) -> Stage:
    """The stage that trains global step `step` (the last stage for steps past the end)."""
    for stage in stages:
        if step < stage.end_step:
            return stage
    return stages[-1]
