"""Architecture description: block strings + scaling -> the resolved list of blocks.

`ArchConfig` holds everything that defines a network (block strings, width/depth coefficients,
rounding rule, activation, regularisation, BatchNorm settings). `resolve_arch` turns it into a
`ResolvedArch`: the stem and head channels and every block with its real channel counts, stride,
residual flag and survival probability. The Flax model (`efficientnet.py`) and the FLOPs /
parameter counter (`counting.py`) both read the resolved form, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from effnetv2_jax.models.block_spec import BlockSpec, ConvType, decode_all
from effnetv2_jax.models.rounding import ROUNDING_RULES, round_filters, round_repeats

# The activations an architecture may name; `layers.ACTIVATIONS` computes them (the same names,
# tested), so that reading an architecture needs no JAX.
ACTIVATION_NAMES = ("silu", "swish", "relu", "relu6", "hard_swish", "gelu", "mish")


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """A network, described as data. Every field can be overridden through `create_model`.

    Attributes:
      block_strings: one block-spec string per stage (see `block_spec.py`).
      width: width coefficient (channel multiplier).
      depth: depth coefficient (repeat multiplier).
      rounding: "v2" or "v1" filter rounding (V1 and Lite add the 10% round-down guard).
      depth_divisor: channels are multiples of this.
      min_depth: lower bound on rounded channels.
      feature_size: head 1x1 conv channels before width scaling (1280).
      fixed_stem_head: Lite: stem fixed at 32 channels and head at `feature_size`, unscaled.
      fixed_end_repeats: Lite: the first and last stage keep their repeats under depth scaling.
      stem_filters: stem channels before scaling; None means the first block's input filters.
      activation: activation everywhere (stem, blocks, SE, head).
      use_se: False drops every SE block (Lite).
      survival_prob: stochastic-depth survival of the last block (linear in the block index);
        None or 1.0 disables stochastic depth.
      dropout_rate: dropout before the classifier.
      bn_momentum: decay of the BN running averages (Keras/flax convention; 0.9 in the V2 code,
        0.99 in the paper, V1 and Lite).
      bn_epsilon: BN epsilon (1e-3, the Keras value the official code uses).
    """

    block_strings: tuple[str, ...]
    width: float = 1.0
    depth: float = 1.0
    rounding: str = "v2"
    depth_divisor: int = 8
    min_depth: int | None = 8
    feature_size: int = 1280
    fixed_stem_head: bool = False
    fixed_end_repeats: bool = False
    stem_filters: int | None = None
    activation: str = "silu"
    use_se: bool = True
    survival_prob: float | None = 0.8
    dropout_rate: float = 0.2
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3

    def __post_init__(self):
        strings = self.block_strings
        if isinstance(strings, str):
            raise ValueError(f"block_strings must be a list of strings, got the single string "
                             f"{strings!r}")
        object.__setattr__(self, "block_strings", tuple(strings))
        decode_all(self.block_strings)  # validates every string, with a message naming it
        if not (isinstance(self.width, (int, float)) and self.width > 0):
            raise ValueError(f"width must be a positive number, got {self.width!r}")
        if not (isinstance(self.depth, (int, float)) and self.depth > 0):
            raise ValueError(f"depth must be a positive number, got {self.depth!r}")
        if self.rounding not in ROUNDING_RULES:
            raise ValueError(f"rounding must be one of {ROUNDING_RULES}, got {self.rounding!r}")
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(f"unknown activation {self.activation!r} "
                             f"(valid: {', '.join(ACTIVATION_NAMES)})")
        if self.survival_prob is not None and not 0.0 < self.survival_prob <= 1.0:
            raise ValueError(f"survival_prob must be in (0, 1] or None, got {self.survival_prob!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {self.bn_momentum!r}")
        if not self.bn_epsilon > 0.0:
            raise ValueError(f"bn_epsilon must be > 0, got {self.bn_epsilon!r}")
        if self.depth_divisor < 1 or self.feature_size < 1:
            raise ValueError("depth_divisor and feature_size must be >= 1, got "
                             f"{self.depth_divisor!r} and {self.feature_size!r}")

    @property
    def specs(self) -> list[BlockSpec]:
        return decode_all(self.block_strings)

    def replace(self, **changes) -> "ArchConfig":
        """A copy with fields changed; an unknown field name raises ValueError listing the valid."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise ValueError(f"unknown architecture override(s) {unknown} "
                             f"(valid: {', '.join(sorted(valid))})")
        return dataclasses.replace(self, **changes)

    def filters(self, filters: int) -> int:
        return round_filters(filters, self.width, divisor=self.depth_divisor,
                             min_depth=self.min_depth, rule=self.rounding)


@dataclasses.dataclass(frozen=True)
class ResolvedBlock:
    """One block of the built network, after scaling.

    Attributes:
      index: global block index (0..num_blocks-1), the `blocks_<i>` of official checkpoints.
      stage: index of the block string it came from.
      conv_type, kernel_size, stride, expand_ratio: as in the spec (stride 1 after the first).
      in_channels: channels actually entering the block.
      out_channels: channels leaving it.
      mid_channels: expanded channels (in_channels * expand_ratio).
      se_channels: squeeze width, max(1, int(declared input filters * se_ratio)); None = no SE.
      residual: identity skip (id_skip, stride 1 and declared in == out).
      survival_prob: stochastic-depth survival probability; 1.0 = never dropped.
    """

    index: int
    stage: int
    conv_type: ConvType
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int
    mid_channels: int
    se_channels: int | None
    residual: bool
    survival_prob: float


@dataclasses.dataclass(frozen=True)
class ResolvedArch:
    stem_channels: int
    blocks: tuple[ResolvedBlock, ...]
    head_channels: int

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def endpoint_blocks(self) -> list[int]:
        """Indices of the blocks whose outputs are the `reduction_i` endpoints (official rule):
        the last block before each stride-2 block, and the final block."""
        blocks = self.blocks
        return [b.index for i, b in enumerate(blocks)
                if i == len(blocks) - 1 or blocks[i + 1].stride > 1]


def resolve_arch(arch: ArchConfig) -> ResolvedArch:
    """Applies width/depth scaling and repeat expansion, as the official builders do."""
    specs = arch.specs
    if arch.fixed_stem_head:
        stem_channels, head_channels = 32, arch.feature_size
    else:
        stem_channels = arch.filters(arch.stem_filters or specs[0].input_filters)
        head_channels = arch.filters(arch.feature_size)

    stage_blocks: list[tuple[int, BlockSpec]] = []
    for stage, spec in enumerate(specs):
        fixed = arch.fixed_end_repeats and stage in (0, len(specs) - 1)
        repeats = spec.repeats if fixed else round_repeats(spec.repeats, arch.depth)
        scaled = spec.replace(input_filters=arch.filters(spec.input_filters),
                              output_filters=arch.filters(spec.output_filters),
                              repeats=repeats,
                              se_ratio=spec.se_ratio if arch.use_se else None)
        stage_blocks.extend((stage, b) for b in scaled.expand_repeats())

    num_blocks = len(stage_blocks)
    drop_rate = 1.0 - (arch.survival_prob if arch.survival_prob is not None else 1.0)
    blocks = []
    in_channels = stem_channels  # Lite: block 0 is built from the real 32 stem channels
    for index, (stage, spec) in enumerate(stage_blocks):
        se_channels = (max(1, int(spec.input_filters * spec.se_ratio))
                       if spec.se_ratio is not None else None)
        blocks.append(ResolvedBlock(
            index=index, stage=stage, conv_type=spec.conv_type, kernel_size=spec.kernel_size,
            stride=spec.stride, expand_ratio=spec.expand_ratio, in_channels=in_channels,
            out_channels=spec.output_filters, mid_channels=in_channels * spec.expand_ratio,
            se_channels=se_channels,
            residual=(spec.id_skip and spec.stride == 1
                      and spec.input_filters == spec.output_filters),
            # Reference section 2: survival = 1 - (1 - p) * idx / N, linear in the global index.
            survival_prob=1.0 - drop_rate * index / num_blocks))
        in_channels = spec.output_filters
    return ResolvedArch(stem_channels=stem_channels, blocks=tuple(blocks),
                        head_channels=head_channels)


def resolve(block_strings: Sequence[str], **fields) -> ResolvedArch:
    """Shorthand: `resolve_arch(ArchConfig(block_strings, **fields))`."""
    return resolve_arch(ArchConfig(tuple(block_strings), **fields))
