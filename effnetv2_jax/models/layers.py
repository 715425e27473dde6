"""The layers EfficientNet is made of, with the official initialisers and TF "SAME" padding.

Kernels use the Flax/TF HWIO layout: a dense conv is [kh, kw, in, out], a depthwise conv
[kh, kw, 1, channels] (TF stores it as [kh, kw, channels, 1]; converters transpose). Parameters are
float32; `dtype` is the compute dtype (bfloat16 for mixed precision).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from effnetv2_jax.models import conv_ops

# Official initialisers (reference section 2, "Initializers"): conv kernels N(0, sqrt(2/fan_out))
# with fan_out = kh*kw*out (untruncated); dense U(-1/sqrt(classes), 1/sqrt(classes)).
conv_kernel_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def depthwise_kernel_init(key, shape, dtype=jnp.float32):
    """N(0, sqrt(2/(k*k))): the TF kernel is [k, k, C, 1], so its fan_out is k*k*1, not k*k*C.

    This "depthwise fan-out quirk" gives std 0.471 for 3x3; Flax's [k, k, 1, C] layout would
    otherwise give a std sqrt(C) times smaller.
    """
    kh, kw = shape[0], shape[1]
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / (kh * kw))


def hard_swish(x):
    return x * jax.nn.relu6(x + 3.0) / 6.0


def mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))


ACTIVATIONS = {"silu": jax.nn.silu, "swish": jax.nn.silu, "relu": jax.nn.relu,
                "relu6": jax.nn.relu6, "hard_swish": hard_swish, "gelu": jax.nn.gelu,
                "mish": mish}


def get_activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r} "
                         f"(valid: {', '.join(sorted(ACTIVATIONS))})") from None


class Conv2D(nnx.Module):
    """Dense k x k convolution, TF "SAME" padding, optional bias.

    Call: [batch, height, width, in_channels] -> [batch, ceil(h/stride), ceil(w/stride), out].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *,
                 stride: int = 1, use_bias: bool = False, impl: str = "xla",
                 dtype=jnp.float32, key: jax.Array):
        self.kernel = nnx.Param(conv_kernel_init(
            key, (kernel_size, kernel_size, in_channels, out_channels), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if use_bias else None
        self.stride = stride
        self.impl = impl
        self.dtype = dtype

    def __call__(self, x):
        y = conv_ops.conv2d(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                            self.stride, self.impl)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class DepthwiseConv2D(nnx.Module):
    """Depthwise k x k convolution (depth multiplier 1), no bias, TF "SAME" padding.

    Call: [batch, height, width, channels] -> [batch, ceil(h/stride), ceil(w/stride), channels].
    """

    def __init__(self, channels: int, kernel_size: int, *, stride: int = 1, impl: str = "xla",
                 dtype=jnp.float32, key: jax.Array):
        self.kernel = nnx.Param(depthwise_kernel_init(
            key, (kernel_size, kernel_size, 1, channels), jnp.float32))
        self.stride = stride
        self.impl = impl
        self.dtype = dtype

    def __call__(self, x):
        return conv_ops.depthwise_conv2d(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                                         self.stride, self.impl)


class BatchNorm(nnx.Module):
    """Keras-convention batch norm over [batch, height, width, channels] (or [batch, channels]).

    Running averages: `running = momentum * running + (1 - momentum) * batch_statistic`, with the
    biased batch variance E[x^2] - E[x]^2 (as the official TPU BN). Statistics and the affine
    parameters are float32 whatever the compute dtype; the output has the compute dtype.

    `groups` > 1 computes the batch statistics separately over `groups` equal, contiguous slices
    of the batch (ghost / per-device BN, as the official TPU code's groups of 8 replicas); the
    running averages then take the mean of the group statistics. Train vs eval is chosen per call.
    Variable names (scale, bias, mean, var) follow flax's BatchNorm.
    """

    def __init__(self, channels: int, *, momentum: float, epsilon: float, dtype=jnp.float32,
                 groups: int = 1):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.groups = groups

    def _batch_stats(self, x):
        """Per-group mean and variance, [groups, 1, ..., channels], in float32."""
        if x.shape[0] % self.groups:
            raise ValueError(f"batch {x.shape[0]} does not divide into {self.groups} BN groups")
        grouped = x.astype(jnp.float32).reshape((self.groups, -1) + x.shape[1:])
        axes = tuple(range(1, grouped.ndim - 1))
        mean = jnp.mean(grouped, axes, keepdims=True)
        mean_sq = jnp.mean(jnp.square(grouped), axes, keepdims=True)
        return grouped, mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)

    def __call__(self, x, *, use_running_average: bool):
        """x: [batch, ..., channels] -> normalised, same shape, compute dtype."""
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
            inv = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
            return (x * inv.astype(self.dtype)
                    + (self.bias[...] - mean * inv).astype(self.dtype)).astype(self.dtype)
        grouped, mean, var = self._batch_stats(x)
        reduce_axes = tuple(range(grouped.ndim - 1))
        m = self.momentum
        self.mean[...] = jax.lax.stop_gradient(
            m * self.mean[...] + (1 - m) * jnp.mean(mean, reduce_axes))
        self.var[...] = jax.lax.stop_gradient(
            m * self.var[...] + (1 - m) * jnp.mean(var, reduce_axes))
        inv = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
        y = grouped * inv + (self.bias[...] - mean * inv)
        return y.reshape(x.shape).astype(self.dtype)


class Dense(nnx.Module):
    """[batch, in_features] -> [batch, out_features], with the official classifier initialiser
    U(-1/sqrt(out), 1/sqrt(out)) and zero bias. Names (kernel [in, out], bias) follow nnx.Linear."""

    def __init__(self, in_features: int, out_features: int, *, dtype=jnp.float32,
                 key: jax.Array):
        self.kernel = nnx.Param(dense_kernel_init(key, (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x):
        return x.astype(self.dtype) @ self.kernel[...].astype(self.dtype) + \
            self.bias[...].astype(self.dtype)


class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation: global mean -> 1x1 conv (bias) -> act -> 1x1 conv (bias) -> sigmoid.

    The kernels keep the conv layout [1, 1, in, out] of the official checkpoints; on a pooled
    [batch, 1, 1, C] tensor they are plain matmuls, computed as such.
    """

    def __init__(self, channels: int, squeeze_channels: int, *, activation: str,
                 dtype=jnp.float32, key: jax.Array):
        reduce_key, expand_key = jax.random.split(key)
        self.reduce = Conv2D(channels, squeeze_channels, 1, use_bias=True, dtype=dtype,
                             key=reduce_key)
        self.expand = Conv2D(squeeze_channels, channels, 1, use_bias=True, dtype=dtype,
                             key=expand_key)
        self.activation = activation
        self.dtype = dtype

    @staticmethod
    def _dense(conv: Conv2D, x):
        kernel = conv.kernel[...][0, 0].astype(x.dtype)
        return x @ kernel + conv.bias[...].astype(x.dtype)

    def __call__(self, x):
        """x: [batch, height, width, channels] -> the same shape, gated per channel."""
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        squeezed = get_activation(self.activation)(self._dense(self.reduce, pooled))
        gate = jax.nn.sigmoid(self._dense(self.expand, squeezed))
        return x * gate[:, None, None, :].astype(x.dtype)


def drop_path(x, survival_prob: float, key: jax.Array):
    """Stochastic depth, per example: x / p * floor(p + U[0, 1)) (the official drop_connect).

    x: [batch, ...]. Each example's whole residual branch is kept (scaled by 1/p) or zeroed.
    """
    uniform = jax.random.uniform(key, (x.shape[0],) + (1,) * (x.ndim - 1), dtype=jnp.float32)
    mask = jnp.floor(survival_prob + uniform)
    return (x.astype(jnp.float32) / survival_prob * mask).astype(x.dtype)
