"""Parameter and FLOP counts without building (or allocating) the network.

`count_flops` counts multiply-adds (MACs) of the conv and dense layers, the convention of the
official README and paper ("FLOPs" there are MACs). It reads the same `ResolvedArch` the model is
built from; a test cross-checks it against XLA's cost analysis of the compiled forward pass.
`count_params` builds the model abstractly (`nnx.eval_shape`), so V2-XL costs no memory.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from effnetv2_jax.models.arch import ResolvedArch, resolve_arch
from effnetv2_jax.models.block_spec import ConvType
from effnetv2_jax.models.factory import abstract_model, resolve_model_args


def _out(size: int, stride: int) -> int:
    return math.ceil(size / stride)  # TF "SAME" padding


def arch_macs(resolved: ResolvedArch, image_size: int | tuple[int, int],
              num_classes: int | None = 1000) -> int:
    """Multiply-adds of one forward pass on one image [height, width] (a square if an int)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    height, width = _out(height, 2), _out(width, 2)
    macs = height * width * 3 * 3 * 3 * resolved.stem_channels
    for b in resolved.blocks:
        out_h, out_w = _out(height, b.stride), _out(width, b.stride)
        k2 = b.kernel_size ** 2
        if b.conv_type == ConvType.MBCONV:
            if b.expand_ratio != 1:
                macs += height * width * b.in_channels * b.mid_channels
            macs += out_h * out_w * k2 * b.mid_channels
            macs += out_h * out_w * b.mid_channels * b.out_channels
            se_in = b.mid_channels
        elif b.expand_ratio != 1:
            macs += out_h * out_w * k2 * b.in_channels * b.mid_channels
            macs += out_h * out_w * b.mid_channels * b.out_channels
            se_in = b.mid_channels
        else:
            macs += out_h * out_w * k2 * b.in_channels * b.out_channels
            se_in = b.in_channels
        if b.se_channels:
            macs += 2 * se_in * b.se_channels
        height, width = out_h, out_w
    macs += height * width * resolved.blocks[-1].out_channels * resolved.head_channels
    if num_classes:
        macs += resolved.head_channels * num_classes
    return macs


def count_flops(name_or_arch, image_size: int | tuple[int, int] | None = None, *,
                num_classes: int | None = 1000, **overrides) -> int:
    """Multiply-adds of conv and dense layers for one image.

    Args:
      name_or_arch: a registered name ("efficientnetv2-s") or an `ArchConfig`.
      image_size: pixels (int for square, or (height, width)); default: the variant's eval size.
      num_classes: classifier outputs (None: no classifier).
      **overrides: as for `create_model` (block_strings=, width=, depth=, ...).
    Returns:
      MACs, e.g. 8.37e9 for efficientnetv2-s at 384 px.
    """
    arch, variant = resolve_model_args(name_or_arch, overrides)
    if image_size is None:
        if variant is None:
            raise ValueError("image_size is required for a custom architecture")
        image_size = variant.eval_size
    return arch_macs(resolve_arch(arch), image_size, num_classes)


def count_params(name_or_arch, *, num_classes: int | None = None, include_top: bool = True,
                 **overrides) -> dict[str, int]:
    """Counts of a model, built abstractly (no weights are allocated).

    Returns:
      {"trainable": parameters, "batch_stats": BN moving mean + variance entries,
       "total": both (the official unit test's and Keras' count_params figure)}.
    """
    model = abstract_model(name_or_arch, num_classes=num_classes, include_top=include_top,
                           **overrides)
    trainable = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    stats = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    return {"trainable": trainable, "batch_stats": stats, "total": trainable + stats}
