"""The EfficientNetV2 scaling rule: extra depth in the late stages, inference size capped.

Tan & Le 2021, section 4.3: large V2 models are scaled up from S with compound scaling plus two
changes, (1) the maximum inference image size is restricted to 480, because larger images cost
memory and training speed for little accuracy, and (2) more layers go to the later stages
(stages 5 and 6 of Table 4, where stage 0 is the stem) rather than to every stage, to add
capacity without much runtime overhead.

This module makes those two changes precise for any base written as block strings:
  * width: base width * beta^phi, as in V1 (`compound.compound_scale`).
  * depth: the V1 rule's block budget, sum over stages of ceil(alpha^phi * repeats), is kept,
    but the blocks it adds all go to the late stages, split in proportion to their base repeats
    (largest remainder). The repeats are written into the block strings (depth coefficient 1.0).
  * resolution: eval = round(base eval * gamma^phi), at most `max_eval_size` (480); train grows
    the same way, at most max_eval_size * base train / base eval (V2-S: 480 * 300/384 = 375 ->
    368 at a multiple of 16).

Applied to the V2-S strings (`python benchmarks/plot_scaling.py`, counted with `count_params`
and `count_flops` at the eval size):

| | blocks per stage | params | FLOPs | eval px |
|---|---|---|---|---|
| V2-S | 2, 4, 4, 6, 9, 15 | 21.46 M | 8.37 G | 384 |
| V2 rule phi=2 | 2, 4, 4, 6, 16, 27 (width 1.21) | 52.99 M | 25.13 G | 480 |
| V2-M (published) | 3, 5, 5, 7, 14, 18, 5 | 54.14 M | 24.58 G | 480 |
| V2 rule phi=4 | 2, 4, 4, 6, 27, 44 (width 1.46) | 122.17 M | 49.97 G | 480 |
| V2-L (published) | 4, 7, 7, 10, 19, 25, 7 | 118.52 M | 56.08 G | 480 |

phi = 2 is within 2.2% of M in both parameters and FLOPs; phi = 4 has L's parameters (+3.1%)
at 11% fewer FLOPs. The published M and L were written by hand: they also deepen stages 1-4 a
little and add a seventh stage (304->512, 384->640 channels), which this rule does not invent.
"""

from __future__ import annotations

from collections.abc import Sequence

from effnetv2_jax.models.block_spec import decode_all, encode
from effnetv2_jax.models.rounding import round_repeats
from effnetv2_jax.scaling.base import (ScaledModel, ScalingBase, stage_repeats,
                                       check_coefficients, round_resolution)
from effnetv2_jax.scaling.compound import ALPHA, BETA, GAMMA

MAX_EVAL_SIZE = 480  # paper section 4.3


def _late_stage_indices(late_stages: Sequence[int] | None, num_stages: int) -> list[int]:
    """1-based stage numbers (Table 4: stage 0 is the stem) -> 0-based block-string indices."""
    if late_stages is None:
        return list(range(max(0, num_stages - 2), num_stages))
    stages = sorted(set(late_stages))
    if not stages or any(not isinstance(s, int) or not 1 <= s <= num_stages for s in stages):
        raise ValueError(f"late_stages={tuple(late_stages)!r} must name stages 1..{num_stages} "
                         f"of this base (stage 0 is the stem; the paper uses 5 and 6 of V2-S)")
    return [s - 1 for s in stages]


def _split(extra: int, weights: list[int]) -> list[int]:
    """`extra` blocks split in proportion to `weights`, largest remainder (ties: later stage)."""
    total = sum(weights)
    shares = [extra * w / total for w in weights]
    parts = [int(s) for s in shares]
    order = sorted(range(len(weights)), key=lambda i: (shares[i] - parts[i], i), reverse=True)
    for i in order[:extra - sum(parts)]:
        parts[i] += 1
    return parts


def v2_scale(base: ScalingBase, phi: float, alpha: float = ALPHA, beta: float = BETA,
             gamma: float = GAMMA, *, late_stages: Sequence[int] | None = None,
             max_eval_size: int = MAX_EVAL_SIZE, resolution_multiple: int = 16) -> ScaledModel:
    """The V2 rule (module docstring): V1 width, V1's block budget in the late stages, capped
    image size.

    Args:
      base: the network to scale, e.g. `base_from_variant("efficientnetv2-s")`.
      phi: compound coefficient, >= 0; 0 returns the base (its repeats written out).
      alpha, beta, gamma: depth, width and resolution multipliers per unit of phi (>= 1).
      late_stages: 1-based stage numbers that receive the extra blocks (stage 0 is the stem, as
        in the paper's Table 4); None means the last two, which for V2-S are 5 and 6.
      max_eval_size: inference size cap in pixels (480 in the paper); a base already above it
        keeps its own size.
      resolution_multiple: sizes are rounded to the nearest multiple of this.
    Returns:
      a `ScaledModel` whose block strings carry the new repeats (depth coefficient 1.0).
    """
    check_coefficients(phi, alpha, beta, gamma)
    if not (isinstance(max_eval_size, int) and max_eval_size > 0):
        raise ValueError(f"max_eval_size must be a positive number of pixels, got "
                         f"{max_eval_size!r}")
    specs = decode_all(base.arch.block_strings)
    late = _late_stage_indices(late_stages, len(specs))
    repeats = stage_repeats(base.arch)  # the base's own depth coefficient applied
    extra = sum(round_repeats(r, alpha ** phi) for r in repeats) - sum(repeats)
    for index, add in zip(late, _split(extra, [repeats[i] for i in late])):
        repeats[index] += add
    strings = tuple(encode(spec.replace(repeats=r)) for spec, r in zip(specs, repeats))
    arch = base.arch.replace(block_strings=strings,
                             width=round(base.arch.width * beta ** phi, 9), depth=1.0,
                             fixed_end_repeats=False)

    cap = max(max_eval_size, base.eval_size)
    if phi == 0:
        train, evaluate = base.train_size, base.eval_size
    else:
        evaluate = min(round_resolution(base.eval_size * gamma ** phi, resolution_multiple), cap)
        train_cap = round_resolution(cap * base.train_size / base.eval_size, resolution_multiple)
        train = min(round_resolution(base.train_size * gamma ** phi, resolution_multiple),
                    max(train_cap, base.train_size))
    return ScaledModel(rule="v2", phi=phi, alpha=alpha, beta=beta, gamma=gamma, arch=arch,
                       train_size=train, eval_size=evaluate)
