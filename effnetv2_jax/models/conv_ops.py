"""2-D convolutions with TF "SAME" padding, in XLA: the reference, and what TPU and GPU run
(the XLA ops of `models.ops`; the CPU ops' faster forms in `effnetv2_jax.cpu.convs` give the
same numbers).

Layouts: activations NHWC, kernels HWIO (Flax / TF): ``conv2d`` kernels are
``[k, k, in, out]``, ``depthwise_conv2d`` kernels ``[k, k, 1, channels]``.
Outputs have the input's dtype; products are accumulated in float32.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding ``(before, after)`` for one spatial dim.

    ``out = ceil(size / stride)``; the total padding makes the last window fit, and the
    odd pixel goes *after* (so stride 2 on an even size pads ``(0, 1)`` for k=3).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(x, kernel, stride: int = 1):
    """Dense 2-D convolution, TF "SAME" padding.

    Args:
      x: ``[batch, height, width, in_channels]``.
      kernel: ``[k, k, in_channels, out_channels]``; cast to ``x.dtype``.
      stride: the same stride in both spatial dims.

    Returns:
      ``[batch, ceil(height / stride), ceil(width / stride), out_channels]``, ``x.dtype``.
    """
    check_conv_args(x, kernel, stride, depthwise=False)
    return xla_conv(x, kernel.astype(x.dtype), int(stride), groups=1)


def depthwise_conv2d(x, kernel, stride: int = 1):
    """Depthwise 2-D convolution (channel multiplier 1), TF "SAME" padding.

    Args:
      x: ``[batch, height, width, channels]``.
      kernel: ``[k, k, 1, channels]`` (Flax layout); cast to ``x.dtype``.
      stride: the same stride in both spatial dims.

    Returns:
      ``[batch, ceil(height / stride), ceil(width / stride), channels]``, ``x.dtype``.
    """
    check_conv_args(x, kernel, stride, depthwise=True)
    return xla_conv(x, kernel.astype(x.dtype), int(stride), groups=x.shape[-1])


def xla_conv(x, kernel, stride: int, groups: int):
    """``lax.conv_general_dilated`` with explicit TF-SAME padding, float32 accumulation; no
    argument checks (see `conv2d`, `depthwise_conv2d`)."""
    k = kernel.shape[0]
    pads = [same_padding(x.shape[1], k, stride), same_padding(x.shape[2], k, stride)]
    y = lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DIMS,
                                 feature_group_count=groups,
                                 preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def check_conv_args(x, kernel, stride, *, depthwise: bool) -> None:
    """Raises ValueError naming the bad argument: a stride that is not a positive int, x not
    rank 4, a non-square kernel, or a kernel that does not match x's channels."""
    name = "depthwise_conv2d" if depthwise else "conv2d"
    if (not isinstance(stride, numbers.Integral) or isinstance(stride, bool)
            or stride < 1):
        raise ValueError(f"{name}: stride must be a positive int, got {stride!r}")
    if x.ndim != 4:
        raise ValueError(f"{name}: x must be rank 4 [batch, height, width, channels], "
                         f"got shape {tuple(x.shape)}")
    if kernel.ndim != 4:
        raise ValueError(f"{name}: kernel must be rank 4 [k, k, in, out], "
                         f"got shape {tuple(kernel.shape)}")
    kh, kw, kin, kout = kernel.shape
    if kh != kw:
        raise ValueError(f"{name}: only square kernels are supported, got {kh}x{kw}")
    channels = x.shape[-1]
    if depthwise and (kin != 1 or kout != channels):
        raise ValueError(f"{name}: kernel must be [k, k, 1, {channels}] for x with "
                         f"{channels} channels, got {tuple(kernel.shape)}")
    if not depthwise and kin != channels:
        raise ValueError(f"{name}: kernel in_channels {kin} != x channels {channels} "
                         f"(kernel {tuple(kernel.shape)}, x {tuple(x.shape)})")
