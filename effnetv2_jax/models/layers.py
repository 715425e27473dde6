"""The layers EfficientNet is made of, with the official initialisers and TF "SAME" padding.

Kernels use the Flax/TF HWIO layout: a dense conv is [kh, kw, in, out], a depthwise conv
[kh, kw, 1, channels] (TF stores it as [kh, kw, channels, 1]; converters transpose). Parameters are
float32; `dtype` is the compute dtype (bfloat16 for mixed precision).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from effnetv2_jax.models import conv_ops, cpu_kernels

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
    [batch, 1, 1, C] tensor they are plain matmuls, computed as such. `impl` is the model's conv
    implementation: with "cpu" the pooling may use a C++ kernel (see `__call__`); with "xla"
    (TPU, GPU, exported models) it is XLA code only.
    """

    def __init__(self, channels: int, squeeze_channels: int, *, activation: str,
                 impl: str = "xla", dtype=jnp.float32, key: jax.Array):
        reduce_key, expand_key = jax.random.split(key)
        self.reduce = Conv2D(channels, squeeze_channels, 1, use_bias=True, dtype=dtype,
                             key=reduce_key)
        self.expand = Conv2D(squeeze_channels, channels, 1, use_bias=True, dtype=dtype,
                             key=expand_key)
        self.activation = activation
        self.impl = impl
        self.dtype = dtype

    @staticmethod
    def _dense(conv: Conv2D, x):
        kernel = conv.kernel[...][0, 0].astype(x.dtype)
        return x @ kernel + conv.bias[...].astype(x.dtype)

    def __call__(self, x, *, train: bool = False):
        """x: [batch, height, width, channels] -> the same shape, gated per channel.

        With the "cpu" impl the pooling (`spatial_mean`) and in training the gate's gradient
        (`gate_channels`) avoid XLA:CPU reductions.
        """
        pooled = spatial_mean(x, impl=self.impl, train=train).astype(self.dtype)
        squeezed = get_activation(self.activation)(self._dense(self.reduce, pooled))
        gate = jax.nn.sigmoid(self._dense(self.expand, squeezed)).astype(x.dtype)
        return gate_channels(x, gate) if self.impl == "cpu" else x * gate[:, None, None, :]

    def kernel_weights(self):
        """(reduce [C, S], reduce_bias [S], expand [S, C], expand_bias [C], activation): the
        form `cpu_kernels.mbconv_depthwise_inference` takes to gate inside MBConv's kernel."""
        return (self.reduce.kernel[...][0, 0], self.reduce.bias[...],
                self.expand.kernel[...][0, 0], self.expand.bias[...], self.activation)


def spatial_mean(x, *, impl: str, train: bool):
    """[batch, height, width, channels] -> the mean over height and width, [batch, channels]
    float32 (squeeze-excite's and the head's pooling).

    With the "cpu" impl it avoids XLA:CPU's reduction, which runs on one thread and recomputes
    the BN + activation that feeds it:
      - at inference on one CPU device, a C++ kernel on all cores (`cpu_kernels.spatial_mean`:
        V2-S eval at 224 px 1.38 vs 1.44 s for squeeze-excite; the head's pooling 5.4 ms);
      - in training, `spatial_sum_by_halving` (V2-S step at 128 px, b32, A/B in one process:
        1.605 vs 1.671 s). The C++ kernel was slower there (2.22 vs 2.08 s): XLA must then
        write its operand out.
    """
    if impl != "cpu":
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if not train and x.dtype == jnp.float32 and cpu_kernels.enabled():
        return cpu_kernels.spatial_mean(x)
    return spatial_sum_by_halving(x) / (x.shape[1] * x.shape[2])


def spatial_sum_by_halving(x):
    """[batch, height, width, channels] -> [batch, channels] float32: the sum over the
    spatial positions as a tree of elementwise adds of the positions' halves.

    XLA:CPU runs such adds as loop fusions split over its threads; a reduce over the same
    axes runs on one thread, and when it fuses its producer (in EfficientNet, BN + SiLU with
    its exp) that thread also recomputes it: 2.5-5 ms a squeeze-excite in the V2-S step at
    128 px against 0.2-0.8 ms for the reduce alone.
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


def drop_path(x, survival_prob: float, key: jax.Array):
    """Stochastic depth, per example: x / p * floor(p + U[0, 1)) (the official drop_connect).

    x: [batch, ...]. Each example's whole residual branch is kept (scaled by 1/p) or zeroed.
    """
    uniform = jax.random.uniform(key, (x.shape[0],) + (1,) * (x.ndim - 1), dtype=jnp.float32)
    mask = jnp.floor(survival_prob + uniform)
    return (x.astype(jnp.float32) / survival_prob * mask).astype(x.dtype)
