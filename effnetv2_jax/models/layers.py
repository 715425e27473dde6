"""The layers EfficientNet is made of, with the official initialisers and TF "SAME" padding.

Kernels use the Flax/TF HWIO layout: a dense conv is [kh, kw, in, out], a depthwise conv
[kh, kw, 1, channels] (TF stores it as [kh, kw, channels, 1]; converters transpose). Parameters are
float32; `dtype` is the compute dtype (bfloat16 for mixed precision).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from effnetv2_jax.models.ops import XLA, Ops

# Official initialisers (official `effnetv2_model.py`, `conv_kernel_initializer` and
# `dense_kernel_initializer`): conv kernels N(0, sqrt(2/fan_out)) with fan_out = kh*kw*out
# (untruncated); dense U(-1/sqrt(classes), 1/sqrt(classes)).
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
    """Dense k x k convolution, TF "SAME" padding, optional bias, computed by `ops`.

    Call: [batch, height, width, in_channels] -> [batch, ceil(h/stride), ceil(w/stride), out].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *,
                 stride: int = 1, use_bias: bool = False, ops: Ops = XLA,
                 dtype=jnp.float32, key: jax.Array):
        self.kernel = nnx.Param(conv_kernel_init(
            key, (kernel_size, kernel_size, in_channels, out_channels), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if use_bias else None
        self.stride = stride
        self.ops = ops
        self.dtype = dtype

    def __call__(self, x):
        y = self.ops.conv(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                          self.stride)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class DepthwiseConv2D(nnx.Module):
    """Depthwise k x k convolution (depth multiplier 1), no bias, TF "SAME" padding, computed by
    `ops`.

    Call: [batch, height, width, channels] -> [batch, ceil(h/stride), ceil(w/stride), channels].
    """

    def __init__(self, channels: int, kernel_size: int, *, stride: int = 1,
                 ops: Ops = XLA, dtype=jnp.float32, key: jax.Array):
        self.kernel = nnx.Param(depthwise_kernel_init(
            key, (kernel_size, kernel_size, 1, channels), jnp.float32))
        self.stride = stride
        self.ops = ops
        self.dtype = dtype

    def __call__(self, x):
        return self.ops.depthwise_conv(x.astype(self.dtype),
                                       self.kernel[...].astype(self.dtype), self.stride)


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

    def __call__(self, x, *, use_running_average: bool, activation: str | None = None):
        """x: [batch, ..., channels] -> normalised, same shape, compute dtype; then
        `activation` (a name of ACTIVATIONS) if given.

        In training, normalisation and activation are one op with its own gradient
        (`batch_norm_act`): it keeps only `x` for the backward pass and recomputes the
        normalised values there, instead of storing them (fewer full passes over memory).
        """
        act = get_activation(activation) if activation else None
        if use_running_average:
            scale, shift = self.inference_affine()
            y = (x * scale.astype(self.dtype) + shift.astype(self.dtype)).astype(self.dtype)
            return act(y) if act else y
        if x.shape[0] % self.groups:
            raise ValueError(f"batch {x.shape[0]} does not divide into {self.groups} BN groups")
        y, mean, var = batch_norm_act(x, self.scale[...], self.bias[...], self.groups,
                                      self.epsilon, activation or "")
        m = self.momentum
        # set_value, not `self.mean[...] = `: under a trace the indexed form reads the
        # tracer's `.sharding`, whose error message walks the whole jaxpr (60% of the V2-S
        # train step's tracing time).
        self.mean.set_value(jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean.mean(0)))
        self.var.set_value(jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var.mean(0)))
        return y.astype(self.dtype)

    def inference_affine(self):
        """(scale, shift), [channels] float32 each: at inference BN is `x * scale + shift`
        (from the running averages)."""
        scale = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.epsilon)
        return scale, self.bias[...] - self.mean[...] * scale


def _group_stats(x, groups):
    """x [batch, ..., C] -> (x as [groups, -1, C] float32, mean [groups, C], var [groups, C]);
    the biased variance E[x^2] - E[x]^2 of the official TPU BN, from one pass over x."""
    grouped = x.reshape(groups, -1, x.shape[-1]).astype(jnp.float32)
    mean = jnp.mean(grouped, 1)
    var = jnp.maximum(jnp.mean(jnp.square(grouped), 1) - jnp.square(mean), 0.0)
    return grouped, mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_act(x, scale, bias, groups: int, epsilon: float, activation: str):
    """Training-mode batch norm (batch statistics per group of the batch) fused with an
    activation ("" for none).

    Args:
      x: [batch, ..., channels], any float dtype; batch divisible by `groups`.
      scale, bias: [channels] float32.
    Returns:
      (y, mean, var): y = act((x - mean) * scale / sqrt(var + eps) + bias), x's shape and dtype
      (computed in float32);
      mean and var [groups, channels] float32 (treat them as constants: no gradient flows
      back through them, as the running averages use stop_gradient).
    """
    return _bn_act_fwd(x, scale, bias, groups, epsilon, activation)[0]


def _bn_act_apply(grouped, mean, var, scale, bias, epsilon):
    inv = scale * jax.lax.rsqrt(var + epsilon)  # [groups, C]
    return grouped * inv[:, None] + (bias - mean * inv)[:, None]


def _bn_act_fwd(x, scale, bias, groups, epsilon, activation):
    grouped, mean, var = _group_stats(x, groups)
    z = _bn_act_apply(grouped, mean, var, scale, bias, epsilon)
    y = get_activation(activation)(z) if activation else z
    return (y.reshape(x.shape).astype(x.dtype), mean, var), (x, mean, var, scale, bias)


def _bn_act_bwd(groups, epsilon, activation, res, cotangents):
    x, mean, var, scale, bias = res
    dy = cotangents[0].reshape(groups, -1, x.shape[-1]).astype(jnp.float32)
    grouped = x.reshape(groups, -1, x.shape[-1]).astype(jnp.float32)
    if activation:  # d/dz of act at the recomputed z (fuses with the passes below)
        z = _bn_act_apply(grouped, mean, var, scale, bias, epsilon)
        g = jax.vjp(get_activation(activation), z)[1](dy)[0]
    else:
        g = dy
    count = grouped.shape[1]
    rstd = jax.lax.rsqrt(var + epsilon)                          # [groups, C]
    sum_g = jnp.sum(g, 1)                                        # d bias per group
    sum_g_xhat = (jnp.sum(g * grouped, 1) - mean * sum_g) * rstd  # d scale per group
    # dx = scale * rstd * (g - mean(g) - xhat * mean(g * xhat)), as g * a + x * b + c.
    a = scale * rstd
    b = -a * rstd * sum_g_xhat / count
    c = -a * sum_g / count - b * mean
    dx = grouped * b[:, None] + (g * a[:, None] + c[:, None])
    return (dx.reshape(x.shape).astype(x.dtype), jnp.sum(sum_g_xhat, 0).astype(scale.dtype),
            jnp.sum(sum_g, 0).astype(bias.dtype))


batch_norm_act.defvjp(_bn_act_fwd, _bn_act_bwd)


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
    [batch, 1, 1, C] tensor they are plain matmuls, computed as such. The pooling and the gate
    are the model's `ops` (the CPU ops avoid XLA:CPU's one-thread reductions there).
    """

    def __init__(self, channels: int, squeeze_channels: int, *, activation: str,
                 ops: Ops = XLA, dtype=jnp.float32, key: jax.Array):
        reduce_key, expand_key = jax.random.split(key)
        self.reduce = Conv2D(channels, squeeze_channels, 1, use_bias=True, dtype=dtype,
                             key=reduce_key)
        self.expand = Conv2D(squeeze_channels, channels, 1, use_bias=True, dtype=dtype,
                             key=expand_key)
        self.activation = activation
        self.ops = ops
        self.dtype = dtype

    @staticmethod
    def _dense(conv: Conv2D, x):
        kernel = conv.kernel[...][0, 0].astype(x.dtype)
        return x @ kernel + conv.bias[...].astype(x.dtype)

    def __call__(self, x, *, train: bool = False):
        """x: [batch, height, width, channels] -> the same shape, gated per channel."""
        pooled = self.ops.spatial_mean(x, train=train).astype(self.dtype)
        squeezed = get_activation(self.activation)(self._dense(self.reduce, pooled))
        gate = jax.nn.sigmoid(self._dense(self.expand, squeezed)).astype(x.dtype)
        return self.ops.gate(x, gate)


@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Builds one model's layers with its ops, compute dtype and BN convention, so that blocks
    say only what they are made of (as timm's `_efficientnet_builder.py` hands its blocks their
    layer factories): `layers.conv(cin, cout, 3, stride=2, key=k)`.

    Attributes:
      ops: the model's ops (`models.ops.ops_for`).
      dtype: compute dtype (parameters stay float32).
      bn_momentum, bn_epsilon: the BatchNorm convention (`BatchNorm`).
    """

    ops: Ops
    dtype: Any
    bn_momentum: float
    bn_epsilon: float

    def conv(self, in_channels: int, out_channels: int, kernel_size: int = 1, *,
             stride: int = 1, use_bias: bool = False, key: jax.Array) -> Conv2D:
        return Conv2D(in_channels, out_channels, kernel_size, stride=stride, use_bias=use_bias,
                      ops=self.ops, dtype=self.dtype, key=key)

    def depthwise_conv(self, channels: int, kernel_size: int, *, stride: int = 1,
                       key: jax.Array) -> DepthwiseConv2D:
        return DepthwiseConv2D(channels, kernel_size, stride=stride, ops=self.ops,
                               dtype=self.dtype, key=key)

    def batch_norm(self, channels: int) -> BatchNorm:
        return BatchNorm(channels, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                         dtype=self.dtype)

    def squeeze_excite(self, channels: int, squeeze_channels: int, *, activation: str,
                       key: jax.Array) -> SqueezeExcite:
        return SqueezeExcite(channels, squeeze_channels, activation=activation, ops=self.ops,
                             dtype=self.dtype, key=key)


def drop_path(x, survival_prob: float, key: jax.Array):
    """Stochastic depth, per example: x / p * floor(p + U[0, 1)) (the official drop_connect).

    x: [batch, ...]. Each example's whole residual branch is kept (scaled by 1/p) or zeroed.
    """
    uniform = jax.random.uniform(key, (x.shape[0],) + (1,) * (x.ndim - 1), dtype=jnp.float32)
    mask = jnp.floor(survival_prob + uniform)
    return (x.astype(jnp.float32) / survival_prob * mask).astype(x.dtype)
