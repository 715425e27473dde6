"""Width and depth scaling of block specs: the official `round_filters` and `round_repeats`.

Two filter-rounding rules exist (`round_filters` of the two official code bases):
  * "v2" (google/automl efficientnetv2): round `filters * width` to the nearest multiple of the
    divisor, at least `min_depth`.
  * "v1" (tensorflow/tpu efficientnet, Lite): the same, plus "never round down by more than 10%":
    if the result is below 0.9 * filters * width, add one divisor. This is why V1-B3's first stage
    has 24 output channels (16 * 1.2 = 19.2 -> 16 < 17.28 -> 24) where the V2 repo builds 16.
The two rules agree for every V2 model.
"""

from __future__ import annotations

import math

ROUNDING_RULES = ("v1", "v2")


def round_filters(filters: int, width: float, *, divisor: int = 8, min_depth: int | None = 8,
                  rule: str = "v2") -> int:
    """Channels after width scaling, rounded to a multiple of `divisor`.

    Args:
      filters: channels before scaling.
      width: width coefficient; 0 or None leaves `filters` unchanged, as the official code does.
      divisor: channels are a multiple of this (8 in every official model).
      min_depth: lower bound on the result (None means `divisor`).
      rule: "v2" or "v1" (adds the 10% round-down guard).
    """
    if rule not in ROUNDING_RULES:
        raise ValueError(f"unknown rounding rule {rule!r} (valid: {', '.join(ROUNDING_RULES)})")
    if not width:
        return filters
    min_depth = min_depth or divisor
    scaled = filters * width
    rounded = max(min_depth, int(scaled + divisor / 2) // divisor * divisor)
    if rule == "v1" and rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks in a stage after depth scaling: ceil(depth * repeats); 0/None leaves it unchanged."""
    if not depth:
        return repeats
    return int(math.ceil(depth * repeats))
