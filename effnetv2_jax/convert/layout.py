"""The weight-holding layers of an EfficientNet, in the official creation order.

Every converter walks this one list and names each layer the way its source does, so the three
sources cannot disagree about what the model holds. The order is the order in which the official
code creates the layers (stem; per block: expand conv, BN, depthwise conv, BN, SE, project conv,
BN; head; classifier), which is also what TF1's per-scope name counters (`conv2d`, `conv2d_1`)
and Keras 3's position-based weight files depend on.

A layer's leaves are named as in the Flax model: `<path>.<leaf>`, e.g. `blocks.3.expand_conv.kernel`
or `stem_bn.mean` (BN mean/var are `nnx.BatchStat`, everything else `nnx.Param`).
"""

from __future__ import annotations

import dataclasses

from effnetv2_jax.models.arch import ResolvedArch, ResolvedBlock
from effnetv2_jax.models.block_spec import ConvType

# Leaves of each kind of layer, in the order the official code creates its variables.
LEAVES = {
    "conv": ("kernel",),                 # [k, k, in, out]
    "depthwise": ("kernel",),            # [k, k, 1, channels]
    "se_conv": ("kernel", "bias"),       # [1, 1, in, out], [out]
    "bn": ("scale", "bias", "mean", "var"),
    "dense": ("kernel", "bias"),         # [in, out], [out]
}
BATCH_STATS = ("mean", "var")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer with weights.

    Attributes:
      path: the Flax module path, dot-separated ("blocks.3.se.reduce").
      kind: "conv", "depthwise", "se_conv", "bn" or "dense" (see `LEAVES`).
      role: what the layer does: "stem_conv", "stem_bn", "expand_conv", "expand_bn",
        "depthwise_conv", "depthwise_bn", "fused_conv", "fused_bn", "se_reduce", "se_expand",
        "project_conv", "project_bn", "head_conv", "head_bn" or "classifier".
      block: the block it belongs to (None for stem, head and classifier).
    """

    path: str
    kind: str
    role: str
    block: ResolvedBlock | None = None

    @property
    def leaves(self) -> tuple[str, ...]:
        return LEAVES[self.kind]


def _se_layers(prefix: str) -> list[Layer]:
    return [Layer(f"{prefix}.se.reduce", "se_conv", "se_reduce"),
            Layer(f"{prefix}.se.expand", "se_conv", "se_expand")]


def block_layers(block: ResolvedBlock) -> list[Layer]:
    """The layers of one block (global index `block.index`), in creation order."""
    p = f"blocks.{block.index}"
    se = _se_layers(p) if block.se_channels else []
    if block.conv_type == ConvType.MBCONV:
        layers = []
        if block.expand_ratio != 1:
            layers += [Layer(f"{p}.expand_conv", "conv", "expand_conv"),
                       Layer(f"{p}.expand_bn", "bn", "expand_bn")]
        layers += [Layer(f"{p}.depthwise_conv", "depthwise", "depthwise_conv"),
                   Layer(f"{p}.depthwise_bn", "bn", "depthwise_bn"), *se,
                   Layer(f"{p}.project_conv", "conv", "project_conv"),
                   Layer(f"{p}.project_bn", "bn", "project_bn")]
    elif block.expand_ratio != 1:
        layers = [Layer(f"{p}.fused_conv", "conv", "fused_conv"),
                  Layer(f"{p}.fused_bn", "bn", "fused_bn"), *se,
                  Layer(f"{p}.project_conv", "conv", "project_conv"),
                  Layer(f"{p}.project_bn", "bn", "project_bn")]
    else:  # fused, no expansion: [SE on the block input], one k x k conv, BN, act
        layers = [*se, Layer(f"{p}.fused_conv", "conv", "fused_conv"),
                  Layer(f"{p}.fused_bn", "bn", "fused_bn")]
    return [dataclasses.replace(layer, block=block) for layer in layers]


def model_layers(resolved: ResolvedArch, include_top: bool = True) -> list[Layer]:
    """All layers with weights, in the official creation order."""
    layers = [Layer("stem_conv", "conv", "stem_conv"), Layer("stem_bn", "bn", "stem_bn")]
    for block in resolved.blocks:
        layers += block_layers(block)
    layers += [Layer("head_conv", "conv", "head_conv"), Layer("head_bn", "bn", "head_bn")]
    if include_top:
        layers.append(Layer("classifier", "dense", "classifier"))
    return layers


def stage_positions(resolved: ResolvedArch) -> dict[int, tuple[int, int]]:
    """Global block index -> (stage, index within the stage), as timm and Keras number blocks."""
    positions, counts = {}, {}
    for block in resolved.blocks:
        j = counts.get(block.stage, 0)
        positions[block.index] = (block.stage, j)
        counts[block.stage] = j + 1
    return positions
