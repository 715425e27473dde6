"""The F(4x4, 3x3) Winograd convolution of the CPU ops: each C++ tile transform equals its
numpy definition, the conv and both its gradients equal XLA's conv, including sizes that are not
multiples of the tile and single pixels, and `convs.conv2d` takes this path exactly where
`winograd.applies` says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnetv2_jax.cpu import convs, kernels, winograd
from effnetv2_jax.models import conv_ops

# The transforms as in kernels.cc (Lavin & Gray 2016, points 0, +-1, +-2, infinity).
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], np.float64)
# Forward within this of XLA's conv, relative to the largest output (F(4x4) rounds more than
# the direct conv: up to 1.1e-5 measured on V2-S layer shapes); gradients likewise.
REL_TOL = 3e-5


def _windows(x):
    """[N, H, W, C] -> [N, Th, Tw, 6, 6, C]: each tile's input window, zero outside."""
    n, h, w, c = x.shape
    th, tw = -(-h // 4), -(-w // 4)
    xp = np.pad(x, ((0, 0), (1, 4 * th + 1 - h), (1, 4 * tw + 1 - w), (0, 0)))
    return np.stack([np.stack([xp[:, 4 * i:4 * i + 6, 4 * j:4 * j + 6] for j in range(tw)], 1)
                     for i in range(th)], 1)


def _points(tiles):
    """[N, Th, Tw, 6, 6, C] -> [36, N * Th * Tw, C] (tile p = (n * Th + i) * Tw + j)."""
    n, th, tw, a, b, c = tiles.shape
    return tiles.reshape(n * th * tw, a * b, c).transpose(1, 0, 2)


def _random(shape, seed):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 8, 8, 5), (1, 7, 9, 3), (3, 1, 1, 4), (1, 5, 13, 17)])
def test_each_tile_transform_equals_its_definition(shape):
    assert kernels.available(), "g++ and jaxlib's FFI headers are on every supported CPU host"
    n, h, w, c = shape
    th, tw = -(-h // 4), -(-w // 4)
    x = _random(shape, 0).astype(np.float64)
    v = _points(np.einsum("ai,nstijc,bj->nstabc", BT, _windows(x), BT))
    np.testing.assert_allclose(jax.jit(kernels.winograd_input)(x.astype(np.float32)), v,
                               rtol=1e-5, atol=1e-5)

    # output: y tile = A^T M A, cut at the image's edge
    m = _random((36, n * th * tw, c), 1).astype(np.float64)
    tiles = np.einsum("ra,pabc,qb->prqc", AT, m.transpose(1, 0, 2).reshape(-1, 6, 6, c), AT)
    y = tiles.reshape(n, th, tw, 4, 4, c).transpose(0, 1, 3, 2, 4, 5).reshape(
        n, 4 * th, 4 * tw, c)[:, :h, :w]
    got = jax.jit(lambda m: kernels.winograd_output(m, shape))(m.astype(np.float32))
    np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-4)

    # the adjoints: <T a, b> == <a, T* b> for each transform T, in float64
    dy = _random(shape, 2).astype(np.float64)
    dm = np.asarray(jax.jit(kernels.winograd_output_adjoint)(dy.astype(np.float32)))
    np.testing.assert_allclose(np.sum(dm * m), np.sum(y * dy), rtol=1e-5)
    dv = _random((36, n * th * tw, c), 3).astype(np.float64)
    dx = np.asarray(jax.jit(lambda v: kernels.winograd_input_adjoint(v, shape))(
        dv.astype(np.float32)))
    np.testing.assert_allclose(np.sum(dx * x), np.sum(dv * v), rtol=1e-5)
    assert dm.shape == (36, n * th * tw, c) and dx.shape == shape


def _loss(conv, cot):
    return lambda x, w: jnp.sum(conv(x, w) * cot)


def _xla(x, w):
    return conv_ops.conv2d(x, w, 1)


@pytest.mark.parametrize("x_shape, out", [((2, 8, 8, 32), 48), ((1, 7, 9, 3), 5),
                                          ((3, 1, 1, 6), 4), ((2, 10, 5, 40), 33)])
def test_conv_and_gradients_equal_xla(x_shape, out):
    x = _random(x_shape, 4)
    w = _random((3, 3, x_shape[-1], out), 5) / np.sqrt(9 * x_shape[-1])
    cot = _random((*x_shape[:3], out), 6)
    both = jax.jit(lambda x, w: [(conv(x, w), *jax.grad(_loss(conv, cot), (0, 1))(x, w))
                                 for conv in (winograd.conv3x3, _xla)])
    got, want = both(x, w)
    for name, g, r in zip(("forward", "d/dx", "d/dkernel"), got, want):
        assert g.shape == r.shape and g.dtype == r.dtype == jnp.float32, name
        scale = float(np.max(np.abs(r)))
        assert scale > 1e-2, name  # not trivially zero
        gap = float(np.max(np.abs(np.asarray(g) - np.asarray(r))))
        assert gap <= REL_TOL * scale, f"{name}: max |winograd - xla| = {gap:.2e} of {scale:.2e}"


def test_conv_under_vmap_equals_a_loop():
    x = _random((3, 2, 6, 6, 8), 7)
    w = _random((3, 3, 8, 4), 8)
    got = jax.jit(jax.vmap(winograd.conv3x3, in_axes=(0, None)))(x, w)
    for i in range(3):
        np.testing.assert_allclose(got[i], _xla(x[i], w), rtol=1e-4, atol=1e-4)


def test_a_mismatched_shape_is_an_error_that_names_the_kernel():
    with pytest.raises(Exception, match="effnetv2_winograd_output: shapes must be"):
        jax.jit(lambda m: kernels.winograd_output(m, (1, 8, 8, 4)))(
            jnp.zeros((36, 5, 4)))  # 8x8 pixels make 4 tiles, not 5


def test_applies_to_3x3_stride_1_float32_with_enough_channels(monkeypatch):
    monkeypatch.setattr(kernels, "enabled", lambda: True)
    c = winograd.MIN_CHANNELS
    x = jnp.zeros((1, 8, 8, c))
    assert winograd.applies(x, jnp.zeros((3, 3, c, c)), 1)
    assert not winograd.applies(x, jnp.zeros((3, 3, c, c)), 2)
    assert not winograd.applies(x, jnp.zeros((5, 5, c, c)), 1)
    assert not winograd.applies(x, jnp.zeros((3, 3, c, c - 1)), 1)
    assert not winograd.applies(x[..., :c - 1], jnp.zeros((3, 3, c - 1, c)), 1)
    assert not winograd.applies(x.astype(jnp.bfloat16), jnp.zeros((3, 3, c, c)), 1)
    monkeypatch.setattr(kernels, "enabled", lambda: False)  # several devices, no compiler
    assert not winograd.applies(x, jnp.zeros((3, 3, c, c)), 1)


def test_conv2d_cpu_takes_the_winograd_path_where_it_applies(monkeypatch):
    # conftest's 4 devices switch the kernels off; one unsharded array is safe to run them on.
    monkeypatch.setattr(kernels, "enabled", lambda: True)
    c = winograd.MIN_CHANNELS
    x, w = _random((2, 6, 7, c), 9), _random((3, 3, c, c), 10) / np.sqrt(9 * c)
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(convs.conv2d(x, w, 1) ** 2), (0, 1)))
    text = grad.lower(x, w).as_text()
    assert all(target in text for target in (
        kernels.WINOGRAD_INPUT, kernels.WINOGRAD_OUTPUT,
        kernels.WINOGRAD_OUTPUT_ADJOINT, kernels.WINOGRAD_INPUT_ADJOINT))
    assert "conv_general_dilated" not in str(jax.make_jaxpr(grad)(x, w))
    want = jax.grad(lambda x, w: jnp.sum(_xla(x, w) ** 2), (0, 1))(x, w)
    for g, r in zip(grad(x, w), want):
        assert float(np.max(np.abs(g - r))) <= REL_TOL * float(np.max(np.abs(r)))
    strided = jax.jit(lambda x, w: convs.conv2d(x, w, 2)).lower(x, w).as_text()
    assert kernels.WINOGRAD_INPUT not in strided
