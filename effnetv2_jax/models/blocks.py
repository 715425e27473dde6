"""MBConv and Fused-MBConv blocks (reference section 2), built from a `ResolvedBlock`.

Both take [batch, height, width, in_channels] and return
[batch, ceil(height/stride), ceil(width/stride), out_channels]. The projection has BN and no
activation; a residual block applies stochastic depth to its branch before the add.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from effnetv2_jax.models import cpu_kernels
from effnetv2_jax.models.arch import ResolvedBlock
from effnetv2_jax.models.block_spec import ConvType
from effnetv2_jax.models.layers import (BatchNorm, Conv2D, DepthwiseConv2D, SqueezeExcite,
                                        drop_path)


class _Block(nnx.Module):
    """What both block types share: activation, residual with stochastic depth."""

    def _init_common(self, block: ResolvedBlock, activation: str):
        self.activation = activation
        self.residual = block.residual
        self.survival_prob = block.survival_prob
        self.index = block.index

    def _finish(self, inputs, branch, train: bool, key: jax.Array | None):
        if not self.residual:
            return branch
        if train and self.survival_prob < 1.0:
            if key is None:
                raise ValueError(f"block {self.index}: stochastic depth in training mode needs "
                                 f"a PRNG key; call the model with key=...")
            branch = drop_path(branch, self.survival_prob, jax.random.fold_in(key, self.index))
        return branch + inputs


class MBConv(_Block):
    """Inverted bottleneck: [1x1 expand, BN, act] -> depthwise kxk, BN, act -> [SE] -> 1x1, BN."""

    def __init__(self, block: ResolvedBlock, *, activation: str, bn_momentum: float,
                 bn_epsilon: float, conv_impl: str, dtype, key: jax.Array):
        assert block.conv_type == ConvType.MBCONV
        self._init_common(block, activation)
        bn = dict(momentum=bn_momentum, epsilon=bn_epsilon, dtype=dtype)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        cin, mid = block.in_channels, block.mid_channels
        # Creation order matches the official variable names (conv2d, tpu_batch_normalization,
        # depthwise_conv2d, tpu_batch_normalization_1, se, conv2d_1, tpu_batch_normalization_2).
        if block.expand_ratio != 1:
            self.expand_conv = Conv2D(cin, mid, 1, impl=conv_impl, dtype=dtype, key=k1)
            self.expand_bn = BatchNorm(mid, **bn)
        else:
            self.expand_conv = self.expand_bn = None
        self.depthwise_conv = DepthwiseConv2D(mid, block.kernel_size, stride=block.stride,
                                              impl=conv_impl, dtype=dtype, key=k2)
        self.depthwise_bn = BatchNorm(mid, **bn)
        self.se = (SqueezeExcite(mid, block.se_channels, activation=activation, impl=conv_impl,
                                 dtype=dtype, key=k3) if block.se_channels else None)
        self.project_conv = Conv2D(mid, block.out_channels, 1, impl=conv_impl, dtype=dtype,
                                   key=k4)
        self.project_bn = BatchNorm(block.out_channels, **bn)

    def __call__(self, x, *, train: bool = False, key: jax.Array | None = None):
        bn = dict(use_running_average=not train, activation=self.activation)
        if not train and self._fused_inference_applies(x):
            y = self._fused_inference(x)
        else:
            y = x
            if self.expand_conv is not None:
                y = self.expand_bn(self.expand_conv(y), **bn)
            y = self.depthwise_bn(self.depthwise_conv(y), **bn)
            if self.se is not None:
                y = self.se(y, train=train)
        y = self.project_bn(self.project_conv(y), use_running_average=not train)
        return self._finish(x, y, train, key)

    def _fused_inference_applies(self, x) -> bool:
        """At inference with the cpu conv impl on one CPU device, float32, and an activation
        the C++ kernel has: see `_fused_inference`."""
        return (self.depthwise_conv.impl == "cpu" and self.depthwise_conv.dtype == jnp.float32
                and x.dtype == jnp.float32
                and self.activation in cpu_kernels.KERNEL_ACTIVATIONS and cpu_kernels.enabled())

    def _fused_inference(self, x):
        """The expansion's BN + activation, the depthwise conv, its BN + activation and
        squeeze-excite, with the BNs folded, in one pass of a C++ kernel
        (`cpu_kernels.mbconv_depthwise_inference`): XLA made eight passes over these
        activations. V2-S eval at 224 px, b32: 1.05-1.06 vs 1.14-1.16 s with the pooling in the
        kernel, and 1.043 vs 1.077 s with squeeze-excite's gate in it too.

        x: [batch, height, width, in_channels] -> y [batch, h / stride, w / stride, mid],
        float32 (gated by squeeze-excite where the block has it).
        """
        if self.expand_conv is not None:
            u = self.expand_conv(x)
            in_scale, in_shift = self.expand_bn.inference_affine()
            act_in = self.activation
        else:  # expand ratio 1: the depthwise conv reads the block input as it is
            u = x
            in_scale, in_shift = jnp.ones(x.shape[-1]), jnp.zeros(x.shape[-1])
            act_in = None
        scale, shift = self.depthwise_bn.inference_affine()
        kernel = self.depthwise_conv.kernel[...][:, :, 0, :] * scale
        squeeze_excite = None if self.se is None else self.se.kernel_weights()
        return cpu_kernels.mbconv_depthwise_inference(
            u, in_scale, in_shift, kernel, shift, self.depthwise_conv.stride, act_in,
            self.activation, squeeze_excite)


class FusedMBConv(_Block):
    """Fused-MBConv: kxk conv (stride), BN, act -> [SE] -> 1x1, BN. With expand ratio 1 it is a
    single kxk conv -> BN -> act (the only case where the last BN is followed by an activation)."""

    def __init__(self, block: ResolvedBlock, *, activation: str, bn_momentum: float,
                 bn_epsilon: float, conv_impl: str, dtype, key: jax.Array):
        assert block.conv_type == ConvType.FUSED_MBCONV
        self._init_common(block, activation)
        bn = dict(momentum=bn_momentum, epsilon=bn_epsilon, dtype=dtype)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        cin, mid, cout = block.in_channels, block.mid_channels, block.out_channels
        k, s = block.kernel_size, block.stride
        self.has_expansion = block.expand_ratio != 1
        if self.has_expansion:
            self.fused_conv = Conv2D(cin, mid, k, stride=s, impl=conv_impl, dtype=dtype,
                                     key=k1)
            self.fused_bn = BatchNorm(mid, **bn)
            self.se = (SqueezeExcite(mid, block.se_channels, activation=activation,
                                     impl=conv_impl, dtype=dtype, key=k3)
                       if block.se_channels else None)
            self.project_conv = Conv2D(mid, cout, 1, impl=conv_impl, dtype=dtype, key=k4)
            self.project_bn = BatchNorm(cout, **bn)
        else:
            # As the official code: with no expansion, SE (never used by a released model) gates
            # the block input, before the single kxk conv.
            self.se = (SqueezeExcite(cin, block.se_channels, activation=activation,
                                     impl=conv_impl, dtype=dtype, key=k3)
                       if block.se_channels else None)
            self.fused_conv = Conv2D(cin, cout, k, stride=s, impl=conv_impl, dtype=dtype,
                                     key=k1)
            self.fused_bn = BatchNorm(cout, **bn)
            self.project_conv = self.project_bn = None

    def __call__(self, x, *, train: bool = False, key: jax.Array | None = None):
        bn = dict(use_running_average=not train, activation=self.activation)
        if not self.has_expansion:
            y = self.se(x, train=train) if self.se is not None else x
            y = self.fused_bn(self.fused_conv(y), **bn)
            return self._finish(x, y, train, key)
        y = self.fused_bn(self.fused_conv(x), **bn)
        if self.se is not None:
            y = self.se(y, train=train)
        y = self.project_bn(self.project_conv(y), use_running_average=not train)
        return self._finish(x, y, train, key)


def make_block(block: ResolvedBlock, **kwargs) -> MBConv | FusedMBConv:
    cls = FusedMBConv if block.conv_type == ConvType.FUSED_MBCONV else MBConv
    return cls(block, **kwargs)
