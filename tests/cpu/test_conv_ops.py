"""The convolutions of both ops (`models.ops`): the CPU ops' (`cpu/convs.py`) must match XLA's
reference (`models/conv_ops.py`: forward, d/dx, d/dkernel), and the reference must match TF
"SAME" semantics; the impl names resolve by platform."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnetv2_jax.cpu import convs
from effnetv2_jax.models.conv_ops import same_padding
from effnetv2_jax.models.ops import CONV_IMPLS, default_conv_impl, ops_for, resolve_conv_impl

FWD_TOL = 1e-5
GRAD_TOL = 1e-4
# Every (kernel, stride) pair on two non-square inputs that between them have an odd and
# an even size in each spatial dim (stride 2 on odd vs even sizes pads differently).
SIZES = [(7, 8), (16, 15)]
CASES = [(hw, k, s) for hw, k, s in itertools.product(SIZES, (1, 3, 5), (1, 2))]


def conv2d(x, w, stride, impl):
    return ops_for(impl).conv(x, w, stride)


def depthwise_conv2d(x, w, stride, impl):
    return ops_for(impl).depthwise_conv(x, w, stride)


# Inputs and comparisons use numpy: eager jax ops would compile a kernel per new shape,
# which costs more than the convolutions under test.


def _inputs(shape_x, shape_w, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, shape_x).astype(np.float32)
    w = (rng.uniform(-1.0, 1.0, shape_w) / np.sqrt(np.prod(shape_w[:3]))).astype(np.float32)
    return x, w, rng


def _value_and_grads(fn, impl, stride, x, w, cot):
    """Output and both gradients of <fn(x, w), cot> (a random projection of the output,
    so every output element's gradient path is exercised with a different weight)."""

    def loss(x, w):
        y = fn(x, w, stride, impl)
        return jnp.sum(y * cot), y

    (_, y), (dx, dw) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, w)
    return y, dx, dw


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _max_abs(a):
    return float(np.max(np.abs(np.asarray(a, np.float32))))


def _check_impls_agree(fn, x, w, stride, rng):
    out_hw = (-(-x.shape[1] // stride), -(-x.shape[2] // stride))
    cot = rng.standard_normal((x.shape[0], *out_hw, w.shape[-1])).astype(np.float32)
    # One jit for both impls (compilation dominates these tests' run time).
    ref, got = jax.jit(lambda x, w, cot: [_value_and_grads(fn, impl, stride, x, w, cot)
                                          for impl in ("xla", "cpu")])(x, w, cot)
    names = ("forward", "d/dx", "d/dkernel")
    for name, r, g, tol in zip(names, ref, got, (FWD_TOL, GRAD_TOL, GRAD_TOL)):
        assert g.shape == r.shape and g.dtype == r.dtype, (name, g.shape, r.shape)
        assert _max_diff(g, r) <= tol, f"{name}: max |cpu - xla| = {_max_diff(g, r):.2e}"
        # Guard against both being trivially zero (e.g. a dropped gradient path).
        assert _max_abs(r) > 1e-3, name


# ----------------------------------------------------------------------- impl names


def test_default_conv_impl_follows_backend():
    expected = "cpu" if jax.default_backend() == "cpu" else "xla"
    assert default_conv_impl() == expected
    assert resolve_conv_impl(None) == expected
    assert resolve_conv_impl("auto") == expected


def test_resolve_conv_impl_passes_valid_names():
    assert CONV_IMPLS == ("xla", "cpu")
    for impl in CONV_IMPLS:
        assert resolve_conv_impl(impl) == impl


@pytest.mark.parametrize("bad", ["gpu", "XLA", "", "fast"])
def test_resolve_conv_impl_rejects_unknown(bad):
    with pytest.raises(ValueError) as err:
        resolve_conv_impl(bad)
    msg = str(err.value)
    assert repr(bad) in msg and "'xla'" in msg and "'cpu'" in msg


def test_ops_for_rejects_unknown_impl():
    assert ops_for("xla").name == "xla" and ops_for("cpu").name == "cpu"
    with pytest.raises(ValueError, match="unknown conv impl 'tpu'"):
        ops_for("tpu")
    with pytest.raises(ValueError, match="unknown conv impl 'auto'"):
        ops_for("auto")  # resolve_conv_impl maps it first


# -------------------------------------------------------------------------- padding


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (8, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (8, 3, 1, (1, 1)), (7, 3, 1, (1, 1)),
    (8, 5, 2, (1, 2)), (7, 5, 2, (2, 2)), (8, 5, 1, (2, 2)), (8, 1, 1, (0, 0)),
    (8, 1, 2, (0, 0)), (7, 1, 2, (0, 0)), (224, 3, 2, (0, 1)), (1, 3, 2, (1, 1)),
    (2, 5, 1, (2, 2)), (16, 2, 2, (0, 0)),
])
def test_same_padding_table(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_same_padding_rule():
    for size, kernel, stride in itertools.product(range(1, 20), (1, 2, 3, 5, 7), (1, 2, 3)):
        before, after = same_padding(size, kernel, stride)
        out = -(-size // stride)
        # The padded input fits exactly `out` windows, with the odd pixel after.
        assert (size + before + after - kernel) // stride + 1 == out
        assert before + after == max((out - 1) * stride + kernel - size, 0)
        assert after - before in (0, 1)


def _numpy_conv_same(x, w, stride, depthwise):
    """Direct TF-SAME convolution with loops (float64)."""
    n, h, wd, c = x.shape
    k = w.shape[0]
    (pt, pb), (pl, pr) = same_padding(h, k, stride), same_padding(wd, k, stride)
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = -(-h // stride), -(-wd // stride)
    out = np.zeros((n, oh, ow, w.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            if depthwise:
                out[:, i, j, :] = np.einsum("nabc,abc->nc", patch, w[:, :, 0, :])
            else:
                out[:, i, j, :] = np.einsum("nabc,abco->no", patch, w)
    return out


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("depthwise", (False, True))
@pytest.mark.parametrize("hw,k,s", [((8, 8), 3, 2), ((7, 9), 3, 2), ((8, 7), 5, 1)])
def test_matches_numpy_reference(impl, depthwise, hw, k, s):
    x, w, _ = _inputs((2, *hw, 4), (k, k, 1, 4) if depthwise else (k, k, 4, 3), seed=3)
    fn = depthwise_conv2d if depthwise else conv2d
    got = np.asarray(jax.jit(lambda x, w: fn(x, w, s, impl))(x, w))
    want = _numpy_conv_same(x, w, s, depthwise)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_even_input_stride2_pads_after_only():
    # For 8 -> 4 with k=3, s=2 the windows are rows {0,1,2}, {2,3,4}, {4,5,6}, {6,7,pad}:
    # with a delta kernel on tap (0, 0) the output is x[::2, ::2] (no pad before).
    x = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
    w = np.zeros((3, 3, 1, 1), np.float32)
    w[0, 0] = 1.0
    outs = jax.jit(lambda x, w: [fn(x, w, 2, impl) for impl in CONV_IMPLS
                                 for fn in (conv2d, depthwise_conv2d)])(x, w)
    for y in outs:
        np.testing.assert_array_equal(y[0, ..., 0], x[0, ::2, ::2, 0])


# ------------------------------------------------------------ cpu path == xla path


@pytest.mark.parametrize("hw,k,s", CASES)
def test_conv2d_cpu_matches_xla(hw, k, s):
    x, w, rng = _inputs((2, *hw, 6), (k, k, 6, 5), seed=k + 10 * s)
    _check_impls_agree(conv2d, x, w, s, rng)


@pytest.mark.parametrize("hw,k,s", CASES)
def test_depthwise_cpu_matches_xla(hw, k, s):
    x, w, rng = _inputs((2, *hw, 8), (k, k, 1, 8), seed=k + 10 * s)
    _check_impls_agree(depthwise_conv2d, x, w, s, rng)


def test_cpu_matches_xla_with_chunked_weight_gradient(monkeypatch):
    # Force the depthwise XLA weight gradient's batch-chunked loop (the C++ kernel is off
    # with conftest's 4 devices) with a ragged last chunk (5 = 2+2+1), which the small
    # shapes above do not reach with the default chunk size. The chunk is sized on one
    # image of the padded input (11x11x6 float32).
    assert not convs.kernels.enabled()
    monkeypatch.setattr(convs, "_CHUNK_BYTES", 2 * 11 * 11 * 6 * 4)
    calls = []
    fori_loop = jax.lax.fori_loop
    monkeypatch.setattr(jax.lax, "fori_loop", lambda lo, hi, body, init, **kw: (
        calls.append((lo, hi)), fori_loop(lo, hi, body, init, **kw))[1])
    for s in (1, 2):
        x, w, rng = _inputs((5, 9, 9, 6), (3, 3, 1, 6), seed=s)
        _check_impls_agree(depthwise_conv2d, x, w, s, rng)
    assert calls and all(c == (0, 2) for c in calls), calls  # 2 steps of 2 images (+1)


def test_kernel_larger_than_input():
    # 5x5 kernel on a 2x3 input: some taps only ever see padding.
    for fn, wshape in ((conv2d, (5, 5, 3, 2)), (depthwise_conv2d, (5, 5, 1, 3))):
        for s in (1, 2):
            x, w, rng = _inputs((2, 2, 3, 3), wshape, seed=s)
            _check_impls_agree(fn, x, w, s, rng)


def _primitives(fn, impl, x, w, stride):
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(fn(x, w, stride, impl) ** 2),
                                    argnums=(0, 1)))(x, w)
    return str(jaxpr)


@pytest.mark.parametrize("s", (1, 2))
def test_cpu_path_avoids_slow_xla_ops(s):
    # The point of "cpu": no grouped conv for depthwise, no conv at all for 1x1. Dense kxk
    # with few channels (or several devices, as here) keeps XLA's conv (cpu/convs.py docstring;
    # tests/cpu/test_winograd.py covers the 3x3 stride-1 Winograd path). "xla" keeps the convs.
    x = np.ones((2, 8, 8, 4))
    dw_cpu = _primitives(depthwise_conv2d, "cpu", x, np.ones((3, 3, 1, 4)), s)
    pw_cpu = _primitives(conv2d, "cpu", x, np.ones((1, 1, 4, 6)), s)
    dense_cpu = _primitives(conv2d, "cpu", x, np.ones((3, 3, 4, 6)), s)
    assert "conv_general_dilated" not in dw_cpu
    assert "conv_general_dilated" not in pw_cpu and "dot_general" in pw_cpu
    assert dense_cpu == _primitives(conv2d, "xla", x, np.ones((3, 3, 4, 6)), s)
    assert "conv_general_dilated" in _primitives(depthwise_conv2d, "xla", x,
                                                 np.ones((3, 3, 1, 4)), s)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("hw,k,s", [((16, 16), 3, 2), ((15, 16), 3, 2), ((7, 12), 5, 1),
                                    ((9, 9), 1, 2), ((8, 8), 1, 1), ((1, 1), 3, 2)])
def test_output_shapes(impl, hw, k, s):
    x = jax.ShapeDtypeStruct((3, *hw, 4), jnp.float32)
    out_hw = (-(-hw[0] // s), -(-hw[1] // s))
    conv = jax.eval_shape(lambda x, w: conv2d(x, w, s, impl), x,
                          jax.ShapeDtypeStruct((k, k, 4, 7), jnp.float32))
    dw = jax.eval_shape(lambda x, w: depthwise_conv2d(x, w, s, impl), x,
                        jax.ShapeDtypeStruct((k, k, 1, 4), jnp.float32))
    assert conv.shape == (3, *out_hw, 7)
    assert dw.shape == (3, *out_hw, 4)


@pytest.mark.parametrize("depthwise", (False, True))
def test_bfloat16(depthwise):
    fn = depthwise_conv2d if depthwise else conv2d
    x, w, _ = _inputs((2, 9, 10, 8), (3, 3, 1, 8) if depthwise else (3, 3, 8, 6), seed=5)

    def run(x, w):
        out = {}
        for impl, s in itertools.product(CONV_IMPLS, (1, 2) if not depthwise else (2,)):
            y, vjp = jax.vjp(lambda a, b: fn(a, b, s, impl), x, w)
            out[impl, s] = (y, *vjp(2 * y))  # gradients of sum(y ** 2)
        return out

    ref = jax.jit(run)(x, w)
    got = jax.jit(run)(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16))
    for key in ref:
        for name, g, r in zip(("forward", "d/dx", "d/dkernel"), got[key], ref[key]):
            assert g.dtype == jnp.bfloat16, (key, name, g.dtype)
            scale = _max_abs(r)
            assert scale > 0.1, (key, name)
            assert _max_diff(g, r) < 0.03 * scale, (key, name, _max_diff(g, r), scale)


def test_kernel_cast_to_input_dtype():
    x = jax.ShapeDtypeStruct((1, 6, 6, 4), jnp.bfloat16)
    for impl in CONV_IMPLS:
        y = jax.eval_shape(lambda x, w: conv2d(x, w, 1, impl), x,
                           jax.ShapeDtypeStruct((3, 3, 4, 2), jnp.float32))
        assert y.dtype == jnp.bfloat16
        y = jax.eval_shape(lambda x, w: depthwise_conv2d(x, w, 2, impl), x,
                           jax.ShapeDtypeStruct((3, 3, 1, 4), jnp.float32))
        assert y.dtype == jnp.bfloat16


# --------------------------------------------------------------------- shape errors


@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_shape_errors(impl):
    x = np.zeros((2, 8, 8, 4))
    with pytest.raises(ValueError, match="in_channels 3 != x channels 4"):
        conv2d(x, np.zeros((3, 3, 3, 5)), 1, impl)
    with pytest.raises(ValueError, match="rank 4"):
        conv2d(x[0], np.zeros((3, 3, 4, 5)), 1, impl)
    with pytest.raises(ValueError, match="rank 4"):
        conv2d(x, np.zeros((3, 4, 5)), 1, impl)
    with pytest.raises(ValueError, match="square"):
        conv2d(x, np.zeros((3, 1, 4, 5)), 1, impl)
    with pytest.raises(ValueError, match=r"\[k, k, 1, 4\]"):
        depthwise_conv2d(x, np.zeros((3, 3, 4, 1)), 1, impl)  # TF (k,k,C,1) layout
    with pytest.raises(ValueError, match=r"\[k, k, 1, 4\]"):
        depthwise_conv2d(x, np.zeros((3, 3, 1, 5)), 1, impl)
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, np.zeros((3, 3, 4, 5)), 0, impl)
