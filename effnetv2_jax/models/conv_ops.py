"""2-D convolutions with TF "SAME" padding, plus a fast path for XLA:CPU.

Two implementations give the same numbers (float32: forward within 1e-5, gradients
within 1e-4; see ``tests/test_conv_ops.py``):

* ``"xla"``: ``lax.conv_general_dilated`` with explicit TF-SAME padding. The reference,
  and what TPU / GPU use.
* ``"cpu"``: rewrites of the convolutions XLA:CPU handles badly, into ops it compiles
  well (elementwise fusions, GEMMs). Speed-ups quoted below are for EfficientNetV2-S
  layer shapes, batch 32 at 128 px, float32, on a 2-core x86 VM
  (``benchmarks/convs.py`` measures them).

  - depthwise ``k x k``: XLA:CPU runs the grouped conv at ~0.5 GFLOP/s forward and
    ~0.3 GFLOP/s forward+backward. Here: a sum of ``k*k`` shifted slices times a
    per-channel weight (one loop fusion), a hand-written backward, and a weight
    gradient reduced in cache-sized batch chunks.
  - ``1 x 1``: a 2-D matmul on the flattened pixels (stride 2 = subsample first); the
    conv's backward is 2-3x slower than the GEMMs' backward.
  - dense ``k x k``: forward and input gradient stay ``lax`` convs (XLA:CPU is fast
    there), but the weight gradient (3-5x slower than the forward in XLA) is a sum of
    ``k*k`` shifted GEMMs, again in cache-sized batch chunks.

Layouts: activations NHWC, kernels HWIO (Flax / TF): ``conv2d`` kernels are
``[k, k, in, out]``, ``depthwise_conv2d`` kernels ``[k, k, 1, channels]``.
Outputs have the input's dtype; products are accumulated in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("xla", "cpu")

_DIMS = ("NHWC", "HWIO", "NHWC")
# Per-chunk working set for the chunked weight gradients. Large enough to amortise the
# loop, small enough that a chunk of x, its slices and dy stay in L2/L3: the depthwise
# weight gradient of [32,32,32,256] takes ~120 ms unchunked and ~20-45 ms in 2-image
# chunks, because XLA materialises each shifted slice before the reduction.
_CHUNK_BYTES = 2 * 1024 * 1024


def default_conv_impl() -> str:
    """``"cpu"`` when JAX's default backend is the CPU, else ``"xla"``."""
    return "cpu" if jax.default_backend() == "cpu" else "xla"


def resolve_conv_impl(impl: str | None) -> str:
    """Map ``None`` / ``"auto"`` to :func:`default_conv_impl`; validate anything else."""
    if impl is None or impl == "auto":
        return default_conv_impl()
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; expected one of {CONV_IMPLS} "
                         "(or None / 'auto')")
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
    kernel = kernel.astype(x.dtype)
    if impl == "xla":
        return _xla_conv(x, kernel, stride, groups=1)
    if kernel.shape[0] == 1:
        return _pointwise(x, kernel, stride)
    return _dense_cpu(x, kernel, stride)


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
    kernel = kernel.astype(x.dtype)
    if impl == "xla":
        return _xla_conv(x, kernel, stride, groups=x.shape[-1])
    return _depthwise_cpu(x, kernel, stride)


# ----------------------------------------------------------------------------- checks


def _check(x, kernel, stride, depthwise):
    name = "depthwise_conv2d" if depthwise else "conv2d"
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
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


def _taps(size, k, stride):
    """Per kernel tap ``i``: ``(o_lo, o_hi, x_lo)``, the outputs ``o_lo..o_hi`` whose
    window puts tap ``i`` inside the (unpadded) input, at input index
    ``x_lo + (o - o_lo) * stride``. Lets the depthwise conv skip the pad op: a pad fused
    into the 9-tap sum costs a bounds check per tap and element (forward 1.7x slower
    with a padded input at [32,32,32,256], 9x slower at stride 2)."""
    out = -(-size // stride)
    before, _ = same_padding(size, k, stride)
    taps = []
    for i in range(k):
        o_lo = max(0, -(-(before - i) // stride))
        o_hi = min(out - 1, (size - 1 + before - i) // stride)
        taps.append((o_lo, o_hi, o_lo * stride + i - before))
    return taps


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
    """``sum_b fn(x[b], dy[b])`` over batch chunks of ~``_CHUNK_BYTES`` of ``x``.

    The chunks run one after another in a ``lax.scan`` so each one's slices stay in cache;
    a ragged last chunk is added outside the loop.
    """
    n = x.shape[0]
    per_image = max(1, x[0].size * x.dtype.itemsize)
    chunk = max(1, min(n, _CHUNK_BYTES // per_image))
    steps, rest = divmod(n, chunk)
    if steps <= 1 and rest == 0:
        return init + fn(x, dy)
    main = steps * chunk

    def body(acc, xy):
        return acc + fn(*xy), None

    xs = x[:main].reshape(steps, chunk, *x.shape[1:])
    ys = dy[:main].reshape(steps, chunk, *dy.shape[1:])
    acc, _ = lax.scan(body, init, (xs, ys))
    if rest:
        acc = acc + fn(x[main:], dy[main:])
    return acc


# ------------------------------------------------------------------------- depthwise


def _depthwise_forward(x, kernel, stride):
    """Sum over taps of ``x[valid window] * w[i, j]``, zero-padded to the output shape.

    One loop fusion, float32 accumulation. ~10x the XLA:CPU grouped conv forward
    (5 vs 0.5 GFLOP/s at [32,32,32,256] stride 1; 20 vs 2 at stride 2).
    """
    n, h, w, c = x.shape
    k = kernel.shape[0]
    out_h, out_w = -(-h // stride), -(-w // stride)
    acc = jnp.zeros((n, out_h, out_w, c), jnp.float32)
    for i, (h_lo, h_hi, hx) in enumerate(_taps(h, k, stride)):
        for j, (w_lo, w_hi, wx) in enumerate(_taps(w, k, stride)):
            if h_hi < h_lo or w_hi < w_lo:
                continue  # tap only ever sees padding (kernel larger than the input)
            xs = lax.slice(x, (0, hx, wx, 0),
                           (n, hx + (h_hi - h_lo) * stride + 1, wx + (w_hi - w_lo) * stride + 1,
                            c), (1, stride, stride, 1))
            term = xs.astype(jnp.float32) * kernel[i, j, 0].astype(jnp.float32)
            acc = acc + jnp.pad(term, ((0, 0), (h_lo, out_h - 1 - h_hi),
                                       (w_lo, out_w - 1 - w_hi), (0, 0)))
    return acc.astype(x.dtype)


def _depthwise_input_grad(dy, kernel, h, w, stride):
    """Transpose of :func:`_depthwise_forward`: each tap's ``dy[valid] * w[i, j]`` is
    placed back on the input grid (``lax.pad`` with interior padding for stride 2).
    One loop fusion; the alternative (correlating a zero-dilated, padded ``dy`` with
    the flipped kernel) was 1.5-2x slower, 10x at stride 2."""
    n, out_h, out_w, c = dy.shape
    k = kernel.shape[0]
    zero = jnp.zeros((), jnp.float32)
    acc = jnp.zeros((n, h, w, c), jnp.float32)
    for i, (h_lo, h_hi, hx) in enumerate(_taps(h, k, stride)):
        for j, (w_lo, w_hi, wx) in enumerate(_taps(w, k, stride)):
            if h_hi < h_lo or w_hi < w_lo:
                continue
            term = (dy[:, h_lo:h_hi + 1, w_lo:w_hi + 1].astype(jnp.float32)
                    * kernel[i, j, 0].astype(jnp.float32))
            span_h, span_w = (h_hi - h_lo) * stride + 1, (w_hi - w_lo) * stride + 1
            acc = acc + lax.pad(term, zero, ((0, 0, 0), (hx, h - hx - span_h, stride - 1),
                                             (wx, w - wx - span_w, stride - 1), (0, 0, 0)))
    return acc.astype(dy.dtype)


def _depthwise_kernel_grad(x, dy, k, stride):
    """``dw[i, j, 0, c] = sum_{n,h,w} x_pad[n, h*s+i, w*s+j, c] * dy[n, h, w, c]``.

    k*k multiply-reduce fusions per batch chunk. XLA copies each shifted slice out
    before reducing; on the whole batch that is ~1 GB of memory traffic for
    [32,32,32,256] (~120-200 ms), in 2-image chunks it stays in cache (~20-45 ms).
    """
    out_h, out_w = dy.shape[1:3]

    def part(xc, dyc):
        xp = _pad_same(xc, k, stride)
        dyc = dyc.astype(jnp.float32)
        return jnp.stack([
            jnp.sum(_window(xp, i, j, out_h, out_w, stride).astype(jnp.float32) * dyc,
                    axis=(0, 1, 2))
            for i in range(k) for j in range(k)])

    dw = _chunked_sum(part, x, dy, jnp.zeros((k * k, x.shape[-1]), jnp.float32))
    return dw.reshape(k, k, 1, x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_cpu(x, kernel, stride):
    return _depthwise_forward(x, kernel, stride)


def _depthwise_cpu_fwd(x, kernel, stride):
    return _depthwise_forward(x, kernel, stride), (x, kernel)


def _depthwise_cpu_bwd(stride, res, dy):
    x, kernel = res
    dx = _depthwise_input_grad(dy, kernel, x.shape[1], x.shape[2], stride)
    dw = _depthwise_kernel_grad(x, dy, kernel.shape[0], stride).astype(kernel.dtype)
    return dx, dw


_depthwise_cpu.defvjp(_depthwise_cpu_fwd, _depthwise_cpu_bwd)


# ----------------------------------------------------------------------------- dense


def _pointwise(x, kernel, stride):
    """1x1 conv as ``[n*h*w, cin] @ [cin, cout]`` (SAME padding is zero for k=1, so a
    strided conv is a subsample then a matmul). Plain autodiff: both gradients are
    GEMMs. Forward+backward 2.5-3.5x faster than the XLA:CPU conv (e.g. 50 vs 175 ms at
    [32,16,16,128]->512); the 2-D reshape beats a 4-D einsum by 1.2-1.5x in the backward
    (the einsum's weight gradient contracts over three axes)."""
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    n, h, w, c = x.shape
    y = lax.dot_general(x.reshape(n * h * w, c), kernel[0, 0], (((1,), (0,)), ((), ())),
                        preferred_element_type=jnp.float32)
    return y.reshape(n, h, w, kernel.shape[-1]).astype(x.dtype)


def _dense_input_grad(dy, kernel, h, w, stride):
    """``dx`` = correlation of the stride-dilated ``dy`` with the spatially flipped,
    in/out-swapped kernel: exactly what JAX's autodiff of the conv emits, and as fast as
    the forward on XLA:CPU. (Shifted GEMMs scattered back were 1.5-6x slower, except at
    stride 2 where they tied.)"""
    k = kernel.shape[0]
    out_h, out_w = dy.shape[1:3]
    pads = []
    for size, out in ((h, out_h), (w, out_w)):
        before, _ = same_padding(size, k, stride)
        pads.append((k - 1 - before, size + before - (out - 1) * stride - 1))
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    dx = lax.conv_general_dilated(dy, flipped, (1, 1), pads, lhs_dilation=(stride, stride),
                                  dimension_numbers=_DIMS, preferred_element_type=jnp.float32)
    return dx.astype(dy.dtype)


def _dense_kernel_grad(x, dy, k, stride):
    """``dw[i, j] = x_pad[:, i::s, j::s].reshape(-1, cin).T @ dy.reshape(-1, cout)``:
    k*k GEMMs per batch chunk. XLA:CPU's own conv weight gradient runs 3-5x slower than
    the forward; these are 1.5-5x faster than it (e.g. [32,32,32,48]->192: ~80 vs
    ~330 ms). Chunking matters: unchunked, the slice copies stream through memory and
    the GEMMs are 1.5-3x slower."""
    out_h, out_w = dy.shape[1:3]
    cin, cout = x.shape[-1], dy.shape[-1]

    def part(xc, dyc):
        xp = _pad_same(xc, k, stride)
        dy2 = dyc.reshape(-1, cout)
        return jnp.stack([
            lax.dot_general(_window(xp, i, j, out_h, out_w, stride).reshape(-1, cin), dy2,
                            (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
            for i in range(k) for j in range(k)])

    dw = _chunked_sum(part, x, dy, jnp.zeros((k * k, cin, cout), jnp.float32))
    return dw.reshape(k, k, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_cpu(x, kernel, stride):
    return _xla_conv(x, kernel, stride, groups=1)


def _dense_cpu_fwd(x, kernel, stride):
    return _xla_conv(x, kernel, stride, groups=1), (x, kernel)


def _dense_cpu_bwd(stride, res, dy):
    x, kernel = res
    dx = _dense_input_grad(dy, kernel, x.shape[1], x.shape[2], stride)
    dw = _dense_kernel_grad(x, dy, kernel.shape[0], stride).astype(kernel.dtype)
    return dx, dw


_dense_cpu.defvjp(_dense_cpu_fwd, _dense_cpu_bwd)
