"""The CPU ops' convolutions: rewrites of the convolutions XLA:CPU handles badly into ops it
compiles well (elementwise fusions, GEMMs), with XLA's own conv where it is good.

They give the numbers of `models.conv_ops` (XLA's convs, the reference; float32: forward within
1e-5, gradients within 1e-4; ``tests/cpu/test_conv_ops.py``). Per kind of conv:

- depthwise ``k x k``: XLA:CPU runs the grouped conv, forward and backward, far below the
  machine's speed. Here: a sum of ``k*k`` shifted windows of the padded input times a
  per-channel weight (one loop fusion), a hand-written backward, and a weight gradient reduced
  in cache-sized batch chunks. The weight gradient is a C++ kernel (``kernels.py``) where it
  can be built; the chunked XLA reduction otherwise. Its output is materialised (a no-op
  kernel), as XLA would otherwise recompute the ``k*k`` taps inside each consumer.
- ``1 x 1``: a 2-D matmul on the flattened pixels (stride 2 = subsample first), faster forward
  and backward than XLA:CPU's conv.
- dense ``k x k``: XLA's own conv, forward and backward. In jaxlib 0.10 without YNNPACK
  fusions (``xla_flags.py``) its weight gradient is as fast per layer as the sum of ``k*k``
  shifted GEMMs this module once had instead, and the step is faster without those (no
  shifted copies).
- dense 3x3 stride 1, float32, at least ``winograd.MIN_CHANNELS`` in and out channels, one
  device (the fused-MBConv stages): Winograd's F(4x4, 3x3) (``winograd.py``), 4x fewer
  multiply-adds in the GEMMs.

``benchmarks/convs.py`` measures each layer and the whole step with either ops;
docs/performance.md gives the figures.

Layouts: activations NHWC, kernels HWIO, as ``models.conv_ops``. Outputs have the input's
dtype; products are accumulated in float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from effnetv2_jax.cpu import kernels, winograd
from effnetv2_jax.models.conv_ops import check_conv_args, same_padding, xla_conv

# Per-chunk size (of the input) for the chunked depthwise weight gradient (the XLA code, where
# the C++ kernel is not used). Large enough to amortise the loop, small enough that a chunk of
# x, its shifted copies and dy stay in L2/L3: XLA materialises each shifted window before the
# reduction, so unchunked it streams the whole batch's windows through memory. Over
# benchmarks/convs.py's shapes 1-3 MiB were within noise of each other; 5 MiB was much slower.
_CHUNK_BYTES = 2 * 1024 * 1024


def conv2d(x, kernel, stride: int = 1):
    """Dense 2-D convolution, TF "SAME" padding; `models.conv_ops.conv2d`'s contract.

    Args:
      x: ``[batch, height, width, in_channels]``.
      kernel: ``[k, k, in_channels, out_channels]``; cast to ``x.dtype``.
      stride: the same stride in both spatial dims.

    Returns:
      ``[batch, ceil(height / stride), ceil(width / stride), out_channels]``, ``x.dtype``.
    """
    check_conv_args(x, kernel, stride, depthwise=False)
    stride = int(stride)
    kernel = kernel.astype(x.dtype)
    if winograd.applies(x, kernel, stride):
        return winograd.conv3x3(x, kernel)
    if kernel.shape[0] > 1:  # dense k x k: XLA's conv (module docstring)
        return xla_conv(x, kernel, stride, groups=1)
    return _pointwise(x, kernel, stride)


def depthwise_conv2d(x, kernel, stride: int = 1):
    """Depthwise 2-D convolution (channel multiplier 1), TF "SAME" padding;
    `models.conv_ops.depthwise_conv2d`'s contract.

    Args:
      x: ``[batch, height, width, channels]``.
      kernel: ``[k, k, 1, channels]`` (Flax layout); cast to ``x.dtype``.
      stride: the same stride in both spatial dims.

    Returns:
      ``[batch, ceil(height / stride), ceil(width / stride), channels]``, ``x.dtype``.
    """
    check_conv_args(x, kernel, stride, depthwise=True)
    stride = int(stride)
    return _depthwise_cpu(x, kernel.astype(x.dtype), stride)


# ---------------------------------------------------------------------------- helpers


def _window(xp, i, j, out_h, out_w, stride):
    """``xp[:, i::stride, j::stride, :]`` cut to ``[n, out_h, out_w, c]``."""
    n, _, _, c = xp.shape
    return lax.slice(xp, (0, i, j, 0),
                     (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
                     (1, stride, stride, 1))


def _pad_same(x, k, stride):
    return jnp.pad(x, ((0, 0), same_padding(x.shape[1], k, stride),
                       same_padding(x.shape[2], k, stride), (0, 0)))


def _chunked_sum(fn, x, dy, init):
    """``init + sum_b fn(x[b], dy[b])`` over batch chunks of ~``_CHUNK_BYTES`` of ``x``.

    The chunks run one after another in a ``fori_loop`` so each one's shifted copies
    stay in cache; a ragged last chunk is added outside the loop. The loop body
    ``dynamic_slice``s the full arrays: a ``lax.scan`` over ``x.reshape(steps, chunk,
    ...)`` made XLA copy both inputs into a new layout first (slower).
    """
    n = x.shape[0]
    per_image = max(1, math.prod(x.shape[1:]) * x.dtype.itemsize)
    chunk = max(1, min(n, _CHUNK_BYTES // per_image))
    steps, rest = divmod(n, chunk)
    if steps <= 1 and rest == 0:
        return init + fn(x, dy)

    def body(step, acc):
        start = step * chunk
        return acc + fn(lax.dynamic_slice_in_dim(x, start, chunk, 0),
                        lax.dynamic_slice_in_dim(dy, start, chunk, 0))

    acc = lax.fori_loop(0, steps, body, init)
    if rest:
        acc = acc + fn(x[steps * chunk:], dy[steps * chunk:])
    return acc


# ------------------------------------------------------------------------- depthwise
#
# Why a padded copy of x (and of dy in the backward): in a network the conv input is a
# BatchNorm + SiLU output, and XLA fuses such elementwise producers into every consumer.
# A conv that reads x through k*k shifted slices inside one fusion then recomputes the
# producer k*k times, which costs more than materialising the input once by the pad op,
# although on a bare input the unpadded one-fusion form is faster. The model is what counts.


def _depthwise_taps(xp, kernel, stride, out_h, out_w):
    """``sum_{i,j} xp[:, i::s, j::s][:out_h, :out_w] * kernel[i, j, 0]`` in float32.

    One loop fusion over the k*k strided windows of the padded input (the casts fuse,
    so float32 accumulation is free); in a network the pad fuses with the producer.
    Slower alternatives: the same over ``jnp.roll`` of the input, one einsum over the
    stacked windows (the k*k-times larger stack is materialised), and a ``fori_loop`` over
    batch chunks of the unpadded form."""
    k = kernel.shape[0]
    acc = None
    for i in range(k):
        for j in range(k):
            term = (_window(xp, i, j, out_h, out_w, stride).astype(jnp.float32)
                    * kernel[i, j, 0].astype(jnp.float32))
            acc = term if acc is None else acc + term
    return acc


def _phases(size, out, k, stride):
    """Polyphase plan for one spatial dim of the input gradient.

    Input index ``p = q * stride + a`` receives ``dy[q + d] * w[i]`` for the taps ``i``
    with ``(a + pad_before - i) % stride == 0``, ``d = (a + pad_before - i) // stride``.
    Returns ``(q_len, lo, hi, phases)``: phase ``a`` has ``q_len`` rows; ``dy`` padded by
    ``(lo, hi)`` makes every shifted window in range; ``phases[a]`` lists ``(i, start)``
    with ``start = d + lo`` the window start in padded ``dy``.
    """
    before, _ = same_padding(size, k, stride)
    q_len = -(-size // stride)
    taps = [[(i, (a + before - i) // stride) for i in range(k)
             if (a + before - i) % stride == 0] for a in range(stride)]
    offsets = [d for phase in taps for _, d in phase]
    lo = max(0, -min(offsets))
    hi = max(0, q_len + max(offsets) - out)
    return q_len, lo, hi, [[(i, d + lo) for i, d in phase] for phase in taps]


def _depthwise_input_grad(dy, kernel, h, w, stride):
    """``dx`` of the depthwise conv, one stride phase at a time.

    Each phase ``dx[:, a::s, b::s]`` is a stride-1 correlation of the (padded) ``dy``
    with the taps that land on it, so no multiply is wasted on the zeros of a dilated
    ``dy``; the ``s*s`` phases are then interleaved (stack + reshape). At stride 1 it is
    a single correlation with the flipped kernel. Slower alternatives (in a BN+SiLU /
    conv / BN+SiLU block): scattering each tap's ``dy * w`` back with interior padding
    (dy's producer is recomputed per tap), correlating a zero-dilated ``dy``."""
    n, out_h, out_w, c = dy.shape
    k = kernel.shape[0]
    qh, lo_h, hi_h, phases_h = _phases(h, out_h, k, stride)
    qw, lo_w, hi_w, phases_w = _phases(w, out_w, k, stride)
    dyp = jnp.pad(dy, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    rows = []
    for taps_h in phases_h:
        cols = []
        for taps_w in phases_w:
            acc = jnp.zeros((n, qh, qw, c), jnp.float32)
            for i, start_h in taps_h:
                for j, start_w in taps_w:
                    win = lax.slice(dyp, (0, start_h, start_w, 0),
                                    (n, start_h + qh, start_w + qw, c))
                    acc = acc + win.astype(jnp.float32) * kernel[i, j, 0].astype(jnp.float32)
            cols.append(acc)
        rows.append(cols)
    if stride == 1:
        dx = rows[0][0]
    else:  # dx[n, q*s + a, r*s + b] = rows[a][b][n, q, r]
        dx = jnp.stack([jnp.stack(cols, axis=3) for cols in rows], axis=2)
        dx = dx.reshape(n, qh * stride, qw * stride, c)[:, :h, :w]
    return dx.astype(dy.dtype)


def _depthwise_kernel_grad(xp, dy, k, stride):
    """``dw[i, j, 0, c] = sum_{n,h,w} xp[n, h*s+i, w*s+j, c] * dy[n, h, w, c]``.

    k*k multiply-reduce fusions per batch chunk. XLA copies each shifted window out
    before reducing; on the whole batch that streams through memory, in chunks of a few
    images it stays in cache. Slower alternatives: one reduction over the stacked k*k
    products, k reductions of k stacked rows, a variadic ``lax.reduce`` (also less
    accurate), reducing over a channel-major transpose.
    """
    out_h, out_w = dy.shape[1:3]

    def part(xc, dyc):
        dyc = dyc.astype(jnp.float32)
        return jnp.stack([
            jnp.sum(_window(xc, i, j, out_h, out_w, stride).astype(jnp.float32) * dyc,
                    axis=(0, 1, 2))
            for i in range(k) for j in range(k)])

    dw = _chunked_sum(part, xp, dy, jnp.zeros((k * k, xp.shape[-1]), jnp.float32))
    return dw.reshape(k, k, 1, xp.shape[-1])


def _depthwise_cpu(x, kernel, stride):
    return _depthwise_vjp(x, kernel, stride, x.shape[1], x.shape[2])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_vjp(x, kernel, stride, h, w):
    return _depthwise_vjp_fwd(x, kernel, stride, h, w)[0]


def _depthwise_vjp_fwd(x, kernel, stride, h, w):
    xp = _pad_same(x, kernel.shape[0], stride)  # materialised once, reused by the backward
    y = _depthwise_taps(xp, kernel, stride, -(-h // stride), -(-w // stride)).astype(x.dtype)
    if kernels.enabled():  # computed once, not again in each consumer (kernels.py)
        y = kernels.materialize(y)
    return y, (xp, kernel)


def _depthwise_vjp_bwd(stride, h, w, res, dy):
    xp, kernel = res
    dx = _depthwise_input_grad(dy, kernel, h, w, stride)
    k = kernel.shape[0]
    if kernels.enabled():  # one device; the same values, much faster
        dw = kernels.depthwise_kernel_grad(xp, dy, k, stride).reshape(kernel.shape)
    else:
        dw = _depthwise_kernel_grad(xp, dy, k, stride)
    return dx, dw.astype(kernel.dtype)


_depthwise_vjp.defvjp(_depthwise_vjp_fwd, _depthwise_vjp_bwd)


# ------------------------------------------------------------------------- pointwise


def _pointwise(x, kernel, stride):
    """1x1 conv as ``[n*h*w, cin] @ [cin, cout]`` (SAME padding is zero for k=1, so a
    strided conv is a subsample then a matmul). Plain autodiff: both gradients are
    GEMMs, faster than the XLA:CPU conv; the 2-D reshape beats a 4-D einsum in the
    backward (the einsum's weight gradient contracts over three axes)."""
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    n, h, w, c = x.shape
    y = lax.dot_general(x.reshape(n * h * w, c), kernel[0, 0], (((1,), (0,)), ((), ())),
                        preferred_element_type=jnp.float32)
    return y.reshape(n, h, w, kernel.shape[-1]).astype(x.dtype)
