"""Winograd's F(4x4, 3x3) convolution (Lavin & Gray, 2016) for the dense 3x3 stride-1 convs
of the CPU ops (the fused-MBConv stages: about half of EfficientNetV2-S's FLOPs).

Each 4x4 tile of output pixels is computed from its 6x6 input window ``d`` as
``A^T [(G w G^T) . (B^T d B)] A``: 36 products a tile and channel pair instead of the direct
conv's 144, so the GEMMs do 4x fewer multiply-adds. The tile transforms are C++ kernels
(``kernels.winograd_*``, which move the 36 planes at memory speed; XLA's fusions for them do
not); the 36 GEMMs and the 6x6 kernel transforms run in XLA. The backward pass is the exact
transpose: ``dM = A dy A^T``, ``dx`` from ``dM (G w G^T)^T`` through the input transform's
adjoint, ``dw = G^T (V^T dM) G`` (a GEMM over tiles with 4x fewer multiply-adds than XLA's
weight gradient).

Accuracy: float32 results within 1.1e-5 of XLA's conv (relative to the largest output), where
the direct conv is within 1e-6; F(4x4) is what cuDNN and oneDNN use for float32 too.

Speed: with few channels the GEMMs are small and the transforms dominate, so the forward is
slower than XLA's conv and ``applies`` leaves such convs to XLA (``MIN_CHANNELS``);
``benchmarks/convs.py`` compares both per layer, docs/performance.md gives the figures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from effnetv2_jax.cpu import kernels

# F(4x4, 3x3) with interpolation points 0, +-1, +-2 and infinity: the kernel transform (B^T and
# A^T live in kernels.cc).
_G = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], np.float32)
# G w G^T for all 36 outputs at once: [36, 9] applied to the 9 taps of every channel pair
# (one small GEMM, several times faster than XLA's loops for the same einsum).
_G_KRON = np.kron(_G, _G)

# Smallest in and out channel counts for which the Winograd form is faster than XLA's conv on
# the CPU (V2-S stage 1's 24 -> 24 is slower, stage 2's 48 -> 192 faster).
MIN_CHANNELS = 32


def applies(x, kernel, stride: int) -> bool:
    """Whether the CPU ops' ``conv2d(x, kernel, stride)`` should take this path: a 3x3 stride-1
    float32 conv with at least ``MIN_CHANNELS`` in and out channels, where the C++ kernels are
    enabled (one device, see ``kernels.enabled``)."""
    k, _, cin, cout = kernel.shape
    return (k == 3 and stride == 1 and x.dtype == jnp.float32
            and min(cin, cout) >= MIN_CHANNELS and kernels.enabled())


def conv3x3(x, kernel):
    """3x3 stride-1 conv with TF "SAME" padding (one pixel each side), by F(4x4, 3x3).

    Args:
      x: ``[batch, height, width, in_channels]`` float32.
      kernel: ``[3, 3, in_channels, out_channels]`` float32.

    Returns:
      ``[batch, height, width, out_channels]`` float32. Differentiable in both arguments (the
      transposed transforms; no higher derivatives). Needs ``kernels.available()``.
    """
    return _conv(x, kernel)


def _batched_matmul(a, b, contract):
    """The 36 transformed-domain GEMMs: batch axis 0, float32 accumulation."""
    return lax.dot_general(a, b, (contract, ((0,), (0,))), preferred_element_type=jnp.float32)


def _transformed_kernel(kernel):
    """``G w G^T`` for every channel pair: ``[3, 3, C, K]`` -> ``[36, C, K]``."""
    return (_G_KRON @ kernel.reshape(9, -1)).reshape(36, *kernel.shape[2:])


@jax.custom_vjp
def _conv(x, kernel):
    return _forward(x, kernel)[0]


def _forward(x, kernel):
    v = kernels.winograd_input(x)                               # [36, P, C]
    u = _transformed_kernel(kernel)                                 # [36, C, K]
    m = _batched_matmul(v, u, ((2,), (1,)))                         # [36, P, K]
    y = kernels.winograd_output(m, (*x.shape[:3], kernel.shape[-1]))
    return y, (v, u, x.shape)


def _backward(residuals, dy):
    v, u, x_shape = residuals
    dm = kernels.winograd_output_adjoint(dy)                    # [36, P, K]
    dv = _batched_matmul(dm, u, ((2,), (2,)))                       # [36, P, C]
    dx = kernels.winograd_input_adjoint(dv, x_shape)
    du = _batched_matmul(v, dm, ((1,), (1,)))                       # [36, C, K]
    dkernel = (_G_KRON.T @ du.reshape(36, -1)).reshape(3, 3, *du.shape[1:])
    return dx, dkernel


_conv.defvjp(_forward, _backward)
