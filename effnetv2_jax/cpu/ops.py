"""The CPU implementation of the model's ops (`models.ops`): the same numbers as XLA's ops,
computed in forms XLA:CPU runs well.

- convs: `convs.py` (depthwise taps with a hand-written backward, 1x1 convs as GEMMs, Winograd
  for the fused stages' 3x3 convs);
- pooling: XLA:CPU runs a reduction over the spatial positions on one thread and recomputes
  the BN + activation that feeds it there. At inference on one device a C++ kernel pools on
  all cores (`kernels.spatial_mean`); in training a tree of elementwise adds
  (`spatial_sum_by_halving`) does, as the kernel would make XLA write its operand out;
- squeeze-excite's gate: its gradient sums by halving too (`gate_channels`);
- MBConv at inference: the expansion's BN + activation, the depthwise conv, its BN +
  activation and squeeze-excite in one pass of a C++ kernel, with the BNs folded
  (`CpuOps.mbconv_inference`): XLA made eight passes over these activations.

The kernels are used where `kernels.enabled()` (built, one device); elsewhere each op falls back
to XLA code of the same values. docs/performance.md gives the measured effect of each piece.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from effnetv2_jax.cpu import convs, kernels


@dataclasses.dataclass(frozen=True)
class CpuOps:
    """XLA:CPU's ops (see the module docstring), an implementation of `models.ops.Ops`."""

    name = "cpu"

    def conv(self, x, kernel, stride: int):
        return convs.conv2d(x, kernel, stride)

    def depthwise_conv(self, x, kernel, stride: int):
        return convs.depthwise_conv2d(x, kernel, stride)

    def spatial_mean(self, x, *, train: bool):
        if not train and x.dtype == jnp.float32 and kernels.enabled():
            return kernels.spatial_mean(x)
        return spatial_sum_by_halving(x) / (x.shape[1] * x.shape[2])

    def gate(self, x, gate):
        return gate_channels(x, gate)

    def mbconv_inference(self, block, x):
        """`block` (a `models.blocks.MBConv`) from its input x [batch, height, width, in] to the
        depthwise stage's output y [batch, h / stride, w / stride, mid], float32, gated by
        squeeze-excite where the block has it, in one C++ pass
        (`kernels.mbconv_depthwise_inference`); None where that kernel does not apply (float32
        only, its activations only, kernels enabled)."""
        if not (block.depthwise_conv.dtype == jnp.float32 and x.dtype == jnp.float32
                and block.activation in kernels.KERNEL_ACTIVATIONS and kernels.enabled()):
            return None
        if block.expand_conv is not None:
            u = block.expand_conv(x)
            in_scale, in_shift = block.expand_bn.inference_affine()
            act_in = block.activation
        else:  # expand ratio 1: the depthwise conv reads the block input as it is
            u = x
            in_scale, in_shift = jnp.ones(x.shape[-1]), jnp.zeros(x.shape[-1])
            act_in = None
        scale, shift = block.depthwise_bn.inference_affine()
        kernel = block.depthwise_conv.kernel[...][:, :, 0, :] * scale
        return kernels.mbconv_depthwise_inference(
            u, in_scale, in_shift, kernel, shift, block.depthwise_conv.stride, act_in,
            block.activation, None if block.se is None else _se_weights(block.se))


CPU = CpuOps()


def _se_weights(se):
    """A `models.layers.SqueezeExcite`'s weights as `kernels.mbconv_depthwise_inference` takes
    them: (reduce [C, S], reduce_bias [S], expand [S, C], expand_bias [C], activation)."""
    return (se.reduce.kernel[...][0, 0], se.reduce.bias[...], se.expand.kernel[...][0, 0],
            se.expand.bias[...], se.activation)


def spatial_sum_by_halving(x):
    """[batch, height, width, channels] -> [batch, channels] float32: the sum over the
    spatial positions as a tree of elementwise adds of the positions' halves.

    XLA:CPU runs such adds as loop fusions split over its threads; a reduce over the same
    axes runs on one thread, and when it fuses its producer (in EfficientNet, BN + SiLU with
    its exp) that thread also recomputes it.
    """
    batch, height, width, channels = x.shape
    x = x.astype(jnp.float32).reshape(batch, height * width, channels)
    while x.shape[1] > 1:
        half = x.shape[1] // 2
        summed = x[:, :half] + x[:, half:2 * half]
        if x.shape[1] % 2:  # the odd position joins the first
            summed = jnp.concatenate([summed[:, :1] + x[:, 2 * half:], summed[:, 1:]], axis=1)
        x = summed
    return x[:, 0]


@jax.custom_vjp
def gate_channels(x, gate):
    """x [batch, height, width, channels] * gate [batch, channels], broadcast over the spatial
    positions; the gate's gradient sums by `spatial_sum_by_halving` (autodiff would reduce)."""
    return x * gate[:, None, None, :]


def _gate_channels_fwd(x, gate):
    return gate_channels(x, gate), (x, gate)


def _gate_channels_bwd(residuals, g):
    x, gate = residuals
    return g * gate[:, None, None, :], spatial_sum_by_halving(g * x).astype(gate.dtype)


gate_channels.defvjp(_gate_channels_fwd, _gate_channels_bwd)
