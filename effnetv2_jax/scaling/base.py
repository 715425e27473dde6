"""What both scaling rules take and give: a base network with its image sizes, and a scaled member.

A `ScalingBase` is any architecture written as block strings (an `ArchConfig`) plus the image
sizes it trains and evaluates at. A rule turns it into a `ScaledModel`: width and depth
coefficients, block strings, and train / eval image sizes. `ScaledModel.arch` goes straight into
`create_model`, `count_params` and `count_flops`; `configs.member_config` turns a member into a
training config that `effnetv2_jax.main` trains.
"""

from __future__ import annotations

import dataclasses
import math

from effnetv2_jax.models.arch import ArchConfig, resolve_arch
from effnetv2_jax.models.variants import get_variant


@dataclasses.dataclass(frozen=True)
class ScalingBase:
    """The network a family grows from.

    Attributes:
      arch: the base architecture (its own width / depth coefficients are the starting point).
      train_size: final training image size, pixels (the last progressive stage).
      eval_size: evaluation image size, pixels.
      name: a label for tables and file names, e.g. "efficientnet-b0" or "quickstart".
    """

    arch: ArchConfig
    train_size: int
    eval_size: int
    name: str = "base"

    def __post_init__(self):
        for field in ("train_size", "eval_size"):
            value = getattr(self, field)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"ScalingBase.{field} must be a positive number of pixels, "
                                 f"got {value!r}")


@dataclasses.dataclass(frozen=True)
class ScaledModel:
    """One member of a scaled family.

    Attributes:
      rule: "v1" (compound scaling) or "v2" (late-stage depth, capped resolution).
      phi: the compound coefficient; 0 is the base itself.
      alpha, beta, gamma: depth, width and resolution multipliers per unit of phi.
      arch: the scaled architecture; `create_model(member.arch)` builds it.
      train_size, eval_size: image sizes in pixels.
    """

    rule: str
    phi: float
    alpha: float
    beta: float
    gamma: float
    arch: ArchConfig
    train_size: int
    eval_size: int

    @property
    def width(self) -> float:
        """Absolute width coefficient (channel multiplier over the block strings)."""
        return self.arch.width

    @property
    def depth(self) -> float:
        """Absolute depth coefficient (repeat multiplier over the block strings)."""
        return self.arch.depth

    @property
    def block_strings(self) -> tuple[str, ...]:
        return self.arch.block_strings

    @property
    def num_blocks(self) -> int:
        return resolve_arch(self.arch).num_blocks

    def stage_repeats(self) -> list[int]:
        """Blocks per stage after depth scaling."""
        return stage_repeats(self.arch)


def stage_repeats(arch: ArchConfig) -> list[int]:
    """Blocks per stage of `arch`, after its depth coefficient (and fixed end stages)."""
    blocks = resolve_arch(arch).blocks
    return [sum(1 for b in blocks if b.stage == s) for s in range(len(arch.block_strings))]


def base_from_variant(name: str) -> ScalingBase:
    """A registered variant as a base, e.g. `base_from_variant("efficientnet-b0")`."""
    variant = get_variant(name)
    return ScalingBase(variant.arch, variant.train_size, variant.eval_size, name)


def round_resolution(pixels: float, multiple: int) -> int:
    """`pixels` rounded to the nearest multiple of `multiple` (halves up), at least `multiple`."""
    if not (isinstance(multiple, int) and multiple >= 1):
        raise ValueError(f"resolution_multiple must be a positive integer (8 or 16 are usual), "
                         f"got {multiple!r}")
    return max(multiple, int(math.floor(pixels / multiple + 0.5)) * multiple)


def check_coefficients(phi: float, alpha: float, beta: float, gamma: float) -> None:
    """Fails fast on values that cannot describe a growing family."""
    if not (isinstance(phi, (int, float)) and phi >= 0 and math.isfinite(phi)):
        raise ValueError(f"phi must be a finite number >= 0 (0 = the base), got {phi!r}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not (isinstance(value, (int, float)) and value >= 1.0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 1 (a multiplier per unit of "
                             f"phi), got {value!r}")
