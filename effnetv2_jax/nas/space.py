"""The search space of EfficientNetV2's architecture search (paper section 3.3), as block strings.

The paper's space is stage-based and factorised: each stage of a base network chooses its
convolution type {MBConv, Fused-MBConv}, number of layers, kernel size {3x3, 5x5} and expansion
ratio {1, 4, 6}; the issue adds squeeze-and-excitation on/off. The stage count, strides and
channel sizes are the base network's ("reusing the same channel sizes from the backbone as they
are already searched", section 3.3). The number of layers is the base stage's plus a delta
(MnasNet's "skip ops" {-1, 0, +1}), never below 1, so the space fits any base from a 4-stage
toy to EfficientNetV2-XL.

A candidate is a tuple of block strings (one per stage), e.g.

    ("r2_k3_s1_e1_i16_o16_c1", "r3_k5_s2_e4_i16_o32_se0.25", ...)

so it is a normal model: `create_model(name, block_strings=candidate)`, `count_flops`, and
`--config.model.block_strings` all take it as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from effnetv2_jax.models.block_spec import BlockSpec, ConvType, decode_all

CONV_TYPES = {"mbconv": ConvType.MBCONV, "fused": ConvType.FUSED_MBCONV}
PAPER_KERNEL_SIZES = (3, 5)
PAPER_EXPAND_RATIOS = (1, 4, 6)
# The per-stage fields a candidate chooses, in the order they are drawn (fixed: determinism).
FIELDS = ("conv_type", "repeats", "kernel_size", "expand_ratio", "se")


def _check_choices(name: str, values: Sequence, allowed: Sequence) -> tuple:
    values = tuple(values)
    if not values:
        raise ValueError(f"search space: {name} is empty; give at least one of "
                         f"{', '.join(map(str, allowed))}")
    if len(set(values)) != len(values):
        raise ValueError(f"search space: {name}={values} repeats a value")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"search space: {name}={values} has {bad}, outside the paper's space "
                         f"(valid: {', '.join(map(str, allowed))})")
    return values


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Per-stage choices around a base network.

    Attributes:
      base: the base network's stages; each candidate keeps their count, strides, input/output
        filters and identity skips.
      conv_types: subset of {MBConv, Fused-MBConv}.
      repeat_deltas: layers of a stage = base repeats + delta (clipped to >= 1).
      kernel_sizes: subset of {3, 5} (pixels).
      expand_ratios: subset of {1, 4, 6}.
      se_choices: subset of {False, True}: squeeze-and-excitation off / on.
      se_ratio: the SE ratio when on (0.25 in every EfficientNet).
    """

    base: tuple[BlockSpec, ...]
    conv_types: tuple[ConvType, ...] = (ConvType.MBCONV, ConvType.FUSED_MBCONV)
    repeat_deltas: tuple[int, ...] = (-1, 0, 1)
    kernel_sizes: tuple[int, ...] = PAPER_KERNEL_SIZES
    expand_ratios: tuple[int, ...] = PAPER_EXPAND_RATIOS
    se_choices: tuple[bool, ...] = (False, True)
    se_ratio: float = 0.25

    def __post_init__(self):
        if not self.base:
            raise ValueError("search space: the base network has no stages; give at least one "
                             "block string (nas.base_blocks or model.block_strings)")
        if not all(isinstance(b, BlockSpec) for b in self.base):
            raise ValueError("search space: base must be BlockSpecs; use SearchSpace.create "
                             "to pass block strings")
        object.__setattr__(self, "base", tuple(self.base))
        object.__setattr__(self, "conv_types", tuple(ConvType(c) for c in _check_choices(
            "conv_types", self.conv_types, tuple(ConvType))))
        _check_choices("kernel_sizes", self.kernel_sizes, PAPER_KERNEL_SIZES)
        _check_choices("expand_ratios", self.expand_ratios, PAPER_EXPAND_RATIOS)
        _check_choices("se_choices", self.se_choices, (False, True))
        deltas = tuple(self.repeat_deltas)
        if not deltas or len(set(deltas)) != len(deltas) or not all(
                isinstance(d, int) and not isinstance(d, bool) for d in deltas):
            raise ValueError(f"search space: repeat_deltas={deltas} must be distinct integers, "
                             f"e.g. (-1, 0, 1)")
        if not 0.0 < self.se_ratio <= 1.0:
            raise ValueError(f"search space: se_ratio={self.se_ratio} must be in (0, 1]")

    @classmethod
    def create(cls, base_blocks: Sequence[str], *, conv_types: Sequence[str] = ("mbconv", "fused"),
               **choices) -> "SearchSpace":
        """From block strings and conv-type names ("mbconv", "fused"); other fields as above."""
        if isinstance(conv_types, str):
            conv_types = (conv_types,)
        unknown = [c for c in conv_types if c not in CONV_TYPES]
        if unknown:
            raise ValueError(f"search space: unknown conv type(s) {unknown} "
                             f"(valid: {', '.join(CONV_TYPES)})")
        if isinstance(base_blocks, str):
            raise ValueError(f"search space: base_blocks must be a list of block strings, got "
                             f"the single string {base_blocks!r}")
        if not base_blocks:
            raise ValueError("search space: the base network has no stages; give at least one "
                             "block string (nas.base_blocks or model.block_strings)")
        return cls(base=tuple(decode_all(base_blocks)),
                   conv_types=tuple(CONV_TYPES[c] for c in conv_types), **choices)

    @property
    def num_stages(self) -> int:
        return len(self.base)

    def options(self, stage: int) -> dict[str, tuple]:
        """The values each field can take at `stage` (repeats already clipped and deduplicated)."""
        base = self.base[stage].repeats
        repeats = tuple(sorted({max(1, base + d) for d in self.repeat_deltas}))
        return {"conv_type": self.conv_types, "repeats": repeats,
                "kernel_size": tuple(self.kernel_sizes), "expand_ratio": tuple(self.expand_ratios),
                "se": tuple(self.se_choices)}

    def size(self) -> int:
        """Number of distinct candidates."""
        total = 1
        for stage in range(self.num_stages):
            for values in self.options(stage).values():
                total *= len(values)
        return total

    def build(self, choices: Sequence[dict]) -> tuple[str, ...]:
        """Block strings from one dict of field values per stage."""
        if len(choices) != self.num_stages:
            raise ValueError(f"{len(choices)} stage choices for a {self.num_stages}-stage space")
        strings = []
        for stage, (base, choice) in enumerate(zip(self.base, choices)):
            options = self.options(stage)
            for field in FIELDS:
                if choice[field] not in options[field]:
                    raise ValueError(f"stage {stage}: {field}={choice[field]!r} is not in the "
                                     f"space ({options[field]})")
            strings.append(base.replace(
                conv_type=choice["conv_type"], repeats=choice["repeats"],
                kernel_size=choice["kernel_size"], expand_ratio=choice["expand_ratio"],
                se_ratio=self.se_ratio if choice["se"] else None).encode())
        return tuple(strings)

    def choices_of(self, block_strings: Sequence[str]) -> list[dict]:
        """Inverse of `build`; raises ValueError if the strings are not a member of the space."""
        specs = decode_all(block_strings)
        if len(specs) != self.num_stages:
            raise ValueError(f"{len(specs)} stages, but the space has {self.num_stages}")
        choices = []
        for stage, (base, spec) in enumerate(zip(self.base, specs)):
            fixed = base.replace(conv_type=spec.conv_type, repeats=spec.repeats,
                                 kernel_size=spec.kernel_size, expand_ratio=spec.expand_ratio,
                                 se_ratio=spec.se_ratio)
            if spec != fixed:
                raise ValueError(f"stage {stage}: {spec.encode()!r} changes more than the "
                                 f"searched fields of the base {base.encode()!r}")
            if spec.se_ratio not in (None, self.se_ratio):
                raise ValueError(f"stage {stage}: {spec.encode()!r} has SE ratio "
                                 f"{spec.se_ratio}, the space uses {self.se_ratio}")
            choices.append({"conv_type": spec.conv_type, "repeats": spec.repeats,
                            "kernel_size": spec.kernel_size, "expand_ratio": spec.expand_ratio,
                            "se": spec.has_se})
        self.build(choices)  # every value must be one of the stage's options
        return choices

    def contains(self, block_strings: Sequence[str]) -> bool:
        try:
            self.choices_of(block_strings)
        except ValueError:
            return False
        return True

    def sample(self, rng: np.random.Generator) -> tuple[str, ...]:
        """A uniformly random candidate (each field of each stage drawn independently)."""
        choices = []
        for stage in range(self.num_stages):
            options = self.options(stage)
            choices.append({f: options[f][int(rng.integers(len(options[f])))] for f in FIELDS})
        return self.build(choices)

    def mutate(self, block_strings: Sequence[str], rng: np.random.Generator) -> tuple[str, ...]:
        """One field of one stage changed to another value (regularised evolution's mutation).

        Returns the parent unchanged only when the space has a single member.
        """
        choices = self.choices_of(block_strings)
        mutable = [(s, f) for s in range(self.num_stages) for f in FIELDS
                   if len(self.options(s)[f]) > 1]
        if not mutable:
            return tuple(block_strings)
        stage, field = mutable[int(rng.integers(len(mutable)))]
        others = [v for v in self.options(stage)[field] if v != choices[stage][field]]
        choices[stage] = {**choices[stage], field: others[int(rng.integers(len(others)))]}
        return self.build(choices)
