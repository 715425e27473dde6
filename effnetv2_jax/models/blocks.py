"""MBConv and Fused-MBConv blocks (paper 3.2 and Figure 2; the layers as official
`effnetv2_model.py`'s `MBConvBlock` and `FusedMBConvBlock`), built from a `ResolvedBlock` and a
`LayerFactory`.

Both take [batch, height, width, in_channels] and return
[batch, ceil(height/stride), ceil(width/stride), out_channels]. The projection has BN and no
activation; a residual block applies stochastic depth to its branch before the add.
"""

from __future__ import annotations

import jax
from flax import nnx

from effnetv2_jax.models.arch import ResolvedBlock
from effnetv2_jax.models.block_spec import ConvType
from effnetv2_jax.models.layers import LayerFactory, drop_path


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

    def __init__(self, block: ResolvedBlock, *, activation: str, layers: LayerFactory,
                 key: jax.Array):
        assert block.conv_type == ConvType.MBCONV
        self._init_common(block, activation)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        cin, mid = block.in_channels, block.mid_channels
        # Creation order matches the official variable names (conv2d, tpu_batch_normalization,
        # depthwise_conv2d, tpu_batch_normalization_1, se, conv2d_1, tpu_batch_normalization_2).
        if block.expand_ratio != 1:
            self.expand_conv = layers.conv(cin, mid, 1, key=k1)
            self.expand_bn = layers.batch_norm(mid)
        else:
            self.expand_conv = self.expand_bn = None
        self.depthwise_conv = layers.depthwise_conv(mid, block.kernel_size, stride=block.stride,
                                                    key=k2)
        self.depthwise_bn = layers.batch_norm(mid)
        self.se = (layers.squeeze_excite(mid, block.se_channels, activation=activation, key=k3)
                   if block.se_channels else None)
        self.project_conv = layers.conv(mid, block.out_channels, 1, key=k4)
        self.project_bn = layers.batch_norm(block.out_channels)
        self.ops = layers.ops

    def __call__(self, x, *, train: bool = False, key: jax.Array | None = None):
        bn = dict(use_running_average=not train, activation=self.activation)
        # At inference the ops may compute the expansion, depthwise conv and SE in one pass
        # (the CPU ops' C++ kernel); None means layer by layer, as below.
        y = None if train else self.ops.mbconv_inference(self, x)
        if y is None:
            y = x
            if self.expand_conv is not None:
                y = self.expand_bn(self.expand_conv(y), **bn)
            y = self.depthwise_bn(self.depthwise_conv(y), **bn)
            if self.se is not None:
                y = self.se(y, train=train)
        y = self.project_bn(self.project_conv(y), use_running_average=not train)
        return self._finish(x, y, train, key)


class FusedMBConv(_Block):
    """Fused-MBConv: kxk conv (stride), BN, act -> [SE] -> 1x1, BN. With expand ratio 1 it is a
    single kxk conv -> BN -> act (the only case where the last BN is followed by an activation)."""

    def __init__(self, block: ResolvedBlock, *, activation: str, layers: LayerFactory,
                 key: jax.Array):
        assert block.conv_type == ConvType.FUSED_MBCONV
        self._init_common(block, activation)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        cin, mid, cout = block.in_channels, block.mid_channels, block.out_channels
        k, s = block.kernel_size, block.stride
        self.has_expansion = block.expand_ratio != 1
        if self.has_expansion:
            self.fused_conv = layers.conv(cin, mid, k, stride=s, key=k1)
            self.fused_bn = layers.batch_norm(mid)
            self.se = (layers.squeeze_excite(mid, block.se_channels, activation=activation,
                                             key=k3) if block.se_channels else None)
            self.project_conv = layers.conv(mid, cout, 1, key=k4)
            self.project_bn = layers.batch_norm(cout)
        else:
            # As the official code: with no expansion, SE (never used by a released model) gates
            # the block input, before the single kxk conv.
            self.se = (layers.squeeze_excite(cin, block.se_channels, activation=activation,
                                             key=k3) if block.se_channels else None)
            self.fused_conv = layers.conv(cin, cout, k, stride=s, key=k1)
            self.fused_bn = layers.batch_norm(cout)
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
