"""2-D convolutions with TF "SAME" padding, plus a fast path for XLA:CPU.

Two implementations give the same numbers (float32: forward within 1e-5, gradients
within 1e-4; see ``tests/test_conv_ops.py``):

* ``"xla"``: ``lax.conv_general_dilated`` with explicit TF-SAME padding. The reference,
  and what TPU / GPU use.
* ``"cpu"``: rewrites of the convolutions XLA:CPU handles badly, into ops it compiles
  well (elementwise fusions, GEMMs). Speed-ups quoted below are for EfficientNetV2-S
  layer shapes, batch 32 at 128 px, float32, on a shared 2-core x86 VM
  (``benchmarks/convs.py`` measures them; timings there varied up to 2x with load).

  - depthwise ``k x k``: XLA:CPU runs the grouped conv at 0.2-0.6 GFLOP/s forward and
    0.05-0.3 GFLOP/s forward+backward. Here: a sum of ``k*k`` shifted windows of the
    padded input times a per-channel weight (one loop fusion), a hand-written
    backward, and a weight gradient reduced in cache-sized batch chunks:
    forward+backward 20-45x faster (forward alone 4-26x on a bare input). The weight
    gradient is a C++ kernel (``cpu_kernels.py``) where it can be built, another 5-14x;
    the chunked XLA reduction otherwise. Its output is materialised (a no-op kernel), as
    XLA would otherwise recompute the ``k*k`` taps inside each consumer.
  - ``1 x 1``: a 2-D matmul on the flattened pixels (stride 2 = subsample first):
    forward+backward 1.3-4x faster than the conv.
  - dense ``k x k``: XLA's own conv, forward and backward. Its weight gradient used to
    run 3-4x slower than the forward; in jaxlib 0.10 without YNNPACK fusions it is as
    fast per layer as the sum of ``k*k`` shifted GEMMs this module had instead, and the
    V2-S step (b32, A/B in one process) is faster without those at 128 px (1.71 vs 1.92 s:
    no shifted copies) and 192 px (4.41 vs 4.47 s), 5% slower at 64 px (0.51 vs 0.48 s).
  - dense 3x3 stride 1, float32, at least ``winograd.MIN_CHANNELS`` in and out channels,
    one device (the fused-MBConv stages): Winograd's F(4x4, 3x3) (``winograd.py``), 4x fewer
    multiply-adds in the GEMMs; forward+backward 2.1-2.3x faster than XLA's conv on V2-S's
    stage 2 and 3 shapes. The V2-S step at 128 px: 1.33 vs 1.57 s; eval at 224 px: 1.16 vs
    1.38 s (A/B in one process).

  A whole EfficientNetV2-S SGD step (batch 32, 128 px) runs ~7.3x faster with "cpu"
  (1.31 vs 9.56 s, ``benchmarks/convs.py``), with a shorter compile.

Layouts: activations NHWC, kernels HWIO (Flax / TF): ``conv2d`` kernels are
``[k, k, in, out]``, ``depthwise_conv2d`` kernels ``[k, k, 1, channels]``.
Outputs have the input's dtype; products are accumulated in float32.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
from jax import lax

from effnetv2_jax.models import cpu_kernels, winograd

CONV_IMPLS = ("xla", "cpu")

_DIMS = ("NHWC", "HWIO", "NHWC")
# Per-chunk size (of the input) for the chunked depthwise weight gradient (the XLA code,
# where the C++ kernel is not used). Large enough to
# amortise the loop, small enough that a chunk of x, its shifted copies and dy stay in
# L2/L3: the depthwise weight gradient of [32,32,32,256] takes 120-200 ms unchunked and
# 20-50 ms in 1-2 image chunks, because XLA materialises each shifted window before
# the reduction. Over the benchmark's shapes 1-3 MiB were within noise of each other;
# 5 MiB was up to 3.5x slower (forward+backward of a 3x3 depthwise on [32,8,8,768]).
_CHUNK_BYTES = 2 * 1024 * 1024


def default_conv_impl(platform: str | None = None) -> str:
    """``"cpu"`` for programs compiled for CPU devices, else ``"xla"``.

    Args:
      platform: the platform of the devices the model's programs are compiled for ("cpu",
        "gpu", "tpu"); None means JAX's default backend, right for a model used on this host
        (a notebook, `predict`). Training passes its mesh's platform, so that a TPU program
        compiled on a CPU host (`--mode=compile`) gets no CPU kernels.
    """
    return "cpu" if (platform or jax.default_backend()) == "cpu" else "xla"


def resolve_conv_impl(impl: str | None, platform: str | None = None) -> str:
    """Map ``None`` / ``"auto"`` to :func:`default_conv_impl` for `platform`; validate anything
    else. The "cpu" impl calls XLA:CPU custom calls (`cpu_kernels.py`), so it is refused for a
    known non-CPU platform."""
    if impl is None or impl == "auto":
        return default_conv_impl(platform)
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; expected one of {CONV_IMPLS} "
                         "(or None / 'auto')")
    if impl == "cpu" and platform not in (None, "cpu"):
        raise ValueError(f"conv impl 'cpu' runs only on CPU devices, and this program is for "
                         f"{platform}; use 'auto' or 'xla' (model.conv_impl)")
    return impl


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding ``(before, after)`` for one spatial dim.

    ``out = ceil(size / stride)``; the total padding makes the last window fit, and the
    odd pixel goes *after* (so stride 2 on an even size pads ``(0, 1)`` for k=3).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(x, kernel, stride: int = 1, impl: str = "xla"):
    """Dense 2-D convolution, TF "SAME" padding.

    Args:
      x: ``[batch, height, width, in_channels]``.
      kernel: ``[k, k, in_channels, out_channels]``; cast to ``x.dtype``.
      stride: the same stride in both spatial dims.
      impl: ``"xla"``, ``"cpu"``, or ``None`` / ``"auto"`` for the backend's default.

    Returns:
      ``[batch, ceil(height / stride), ceil(width / stride), out_channels]``, ``x.dtype``.
    """
    impl = resolve_conv_impl(impl)
    _check(x, kernel, stride, depthwise=False)
    stride = int(stride)
    kernel = kernel.astype(x.dtype)
    if impl == "cpu" and winograd.applies(x, kernel, stride):
        return winograd.conv3x3(x, kernel)
    if impl == "xla" or kernel.shape[0] > 1:  # dense k x k: XLA's conv (module docstring)
        return _xla_conv(x, kernel, stride, groups=1)
    return _pointwise(x, kernel, stride)


def depthwise_conv2d(x, kernel, stride: int = 1, impl: str = "xla"):
    """Depthwise 2-D convolution (channel multiplier 1), TF "SAME" padding.

    Args:
      x: ``[batch, height, width, channels]``.
      kernel: ``[k, k, 1, channels]`` (Flax layout); cast to ``x.dtype``.
      stride: the same stride in both spatial dims.
      impl: ``"xla"``, ``"cpu"``, or ``None`` / ``"auto"`` for the backend's default.

    Returns:
      ``[batch, ceil(height / stride), ceil(width / stride), channels]``, ``x.dtype``.
    """
    impl = resolve_conv_impl(impl)
    _check(x, kernel, stride, depthwise=True)
    stride = int(stride)
    kernel = kernel.astype(x.dtype)
    if impl == "xla":
        return _xla_conv(x, kernel, stride, groups=x.shape[-1])
    return _depthwise_cpu(x, kernel, stride)


# ----------------------------------------------------------------------------- checks


def _check(x, kernel, stride, depthwise):
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


# -------------------------------------------------------------------------------- xla


def _xla_conv(x, kernel, stride, groups):
    k = kernel.shape[0]
    pads = [same_padding(x.shape[1], k, stride), same_padding(x.shape[2], k, stride)]
    y = lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DIMS,
                                 feature_group_count=groups,
                                 preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


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
    ...)`` made XLA copy both inputs into a new layout first (25-50% slower).
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
# producer k*k times: the forward is 3-4x slower (and forward+backward ~2x) than with
# the input materialised once by the pad op, although on a bare input the unpadded
# one-fusion form is 1.7x faster. The model is what counts.


def _depthwise_taps(xp, kernel, stride, out_h, out_w):
    """``sum_{i,j} xp[:, i::s, j::s][:out_h, :out_w] * kernel[i, j, 0]`` in float32.

    One loop fusion over the k*k strided windows of the padded input (the casts fuse,
    so float32 accumulation is free). 4-26x the XLA:CPU grouped conv forward on a bare
    input, where the pad is an extra pass; in a network the pad fuses with the producer.
    Also tried: the same over ``jnp.roll`` of the input (3x slower at stride 2), one
    einsum over the stacked windows (10x slower: the k*k-times larger stack is
    materialised), and a ``fori_loop`` over batch chunks of the unpadded form (which
    also keeps the producer out of the fusion; 2-4x slower at stride 1)."""
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
    a single correlation with the flipped kernel. Alternatives measured in a
    BN+SiLU / conv / BN+SiLU block: scattering each tap's ``dy * w`` back with interior
    padding (1.1-2.4x slower: dy's producer is recomputed per tap), correlating a
    zero-dilated ``dy`` (2-10x slower at stride 2)."""
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
    before reducing; on the whole batch that is ~1 GB of memory traffic for
    [32,32,32,256] (120-200 ms), in 2-image chunks it stays in cache (20-50 ms).
    Slower alternatives: one reduction over the stacked k*k products (2-4x), k
    reductions of k stacked rows (1.3-3x), a variadic ``lax.reduce`` (no faster, less
    accurate), reducing over a channel-major transpose (3x).
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
    if cpu_kernels.enabled():  # computed once, not again in each consumer (cpu_kernels.py)
        y = cpu_kernels.materialize(y)
    return y, (xp, kernel)


def _depthwise_vjp_bwd(stride, h, w, res, dy):
    xp, kernel = res
    dx = _depthwise_input_grad(dy, kernel, h, w, stride)
    k = kernel.shape[0]
    if cpu_kernels.enabled():  # CPU, one device; 5-14x faster, same values
        dw = cpu_kernels.depthwise_kernel_grad(xp, dy, k, stride).reshape(kernel.shape)
    else:
        dw = _depthwise_kernel_grad(xp, dy, k, stride)
    return dx, dw.astype(kernel.dtype)


_depthwise_vjp.defvjp(_depthwise_vjp_fwd, _depthwise_vjp_bwd)


# ------------------------------------------------------------------------- pointwise


def _pointwise(x, kernel, stride):
    """1x1 conv as ``[n*h*w, cin] @ [cin, cout]`` (SAME padding is zero for k=1, so a
    strided conv is a subsample then a matmul). Plain autodiff: both gradients are
    GEMMs. Forward+backward 1.3-4x faster than the XLA:CPU conv (e.g. 50 vs 175 ms at
    [32,16,16,128]->512); the 2-D reshape beats a 4-D einsum by 1.1-1.5x in the backward
    (the einsum's weight gradient contracts over three axes)."""
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    n, h, w, c = x.shape
    y = lax.dot_general(x.reshape(n * h * w, c), kernel[0, 0], (((1,), (0,)), ((), ())),
                        preferred_element_type=jnp.float32)
    return y.reshape(n, h, w, kernel.shape[-1]).astype(x.dtype)
