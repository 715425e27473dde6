"""The C++ depthwise weight gradient equals the XLA formulation and float64 numpy; without a
compiler (or switched off) the package falls back to XLA code with a warning, same values."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnetv2_jax.models import conv_ops, cpu_kernels


def _exact(xp, dy, k, stride):
    """float64 reference: sum over batch and pixels of each shifted window times dy."""
    xp, dy = np.asarray(xp, np.float64), np.asarray(dy, np.float64)
    oh, ow = dy.shape[1:3]
    return np.stack([np.stack([
        np.einsum("nhwc,nhwc->c", xp[:, i:i + (oh - 1) * stride + 1:stride,
                                     j:j + (ow - 1) * stride + 1:stride], dy)
        for j in range(k)]) for i in range(k)])


@pytest.mark.parametrize("n, h, w, c, k, stride", [
    (2, 8, 8, 16, 3, 1), (3, 9, 7, 24, 3, 2), (2, 6, 6, 8, 5, 1), (1, 11, 11, 40, 5, 2),
    (4, 4, 4, 3, 3, 1)])
def test_native_weight_gradient_matches_xla_and_float64(n, h, w, c, k, stride):
    assert cpu_kernels.available(), "g++ and jaxlib's FFI headers are on every supported CPU host"
    rng = np.random.default_rng(n * 100 + c)
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
    xp = conv_ops._pad_same(x, k, stride)
    dy = jnp.asarray(rng.standard_normal((n, -(-h // stride), -(-w // stride), c)), jnp.float32)
    native = jax.jit(cpu_kernels.depthwise_kernel_grad, static_argnums=(2, 3))(xp, dy, k, stride)
    xla = conv_ops._depthwise_kernel_grad(xp, dy, k, stride).reshape(k, k, c)
    exact = _exact(xp, dy, k, stride)
    assert native.shape == (k, k, c) and native.dtype == jnp.float32
    np.testing.assert_allclose(native, exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(native, xla, rtol=1e-5, atol=1e-5)


def test_depthwise_gradient_uses_the_kernel_and_equals_xla_convs():
    """The "cpu" impl's whole VJP (with the C++ weight gradient) against XLA's grouped conv."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 12)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 12)), jnp.float32)

    def loss(impl):
        return lambda x, kernel: jnp.sum(jnp.sin(conv_ops.depthwise_conv2d(x, kernel, 2, impl)))

    grad = jax.jit(jax.grad(loss("cpu"), argnums=(0, 1)))
    assert cpu_kernels.DEPTHWISE_KERNEL_GRAD in grad.lower(x, kernel).as_text()
    for got, want in zip(grad(x, kernel), jax.grad(loss("xla"), argnums=(0, 1))(x, kernel)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# A process registers one library, so the fallbacks are checked in fresh processes, as a user
# without a compiler would start one: the gradient comes from XLA code and equals XLA's convs.
_FRESH_PROCESS = """
import jax, jax.numpy as jnp, numpy as np
from effnetv2_jax.models import conv_ops, cpu_kernels
x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 6, 4)), jnp.float32)
kernel = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3, 1, 4)), jnp.float32)
grad = jax.jit(jax.grad(lambda k: jnp.sum(conv_ops.depthwise_conv2d(x, k, 1, "cpu") ** 2)))
want = jax.grad(lambda k: jnp.sum(conv_ops.depthwise_conv2d(x, k, 1, "xla") ** 2))(kernel)
np.testing.assert_allclose(grad(kernel), want, rtol=1e-4, atol=1e-4)
print("native:", cpu_kernels.available(),
      cpu_kernels.DEPTHWISE_KERNEL_GRAD in grad.lower(kernel).as_text())
"""


def _fresh_process(tmp_path, **env):
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS], capture_output=True, text=True,
                          env={**os.environ, "EFFNETV2_JAX_KERNEL_CACHE": str(tmp_path), **env},
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


@pytest.mark.parametrize("env, why", [
    ({"CXX": "no-such-compiler"}, "no C++ compiler 'no-such-compiler' on PATH"),
    ({"CXX": "false"}, "false failed"),
    ({"EFFNETV2_JAX_NATIVE_KERNELS": "0"}, None)])
def test_without_the_kernels_xla_code_gives_the_same_gradient(env, why, tmp_path):
    out, err = _fresh_process(tmp_path, **env)
    assert "native: False False" in out
    if why:
        assert why in err and "using XLA's code" in err
    assert list(tmp_path.iterdir()) == []  # nothing built, no half-written file left behind


def test_the_build_is_cached_per_source_and_machine(tmp_path):
    out, _ = _fresh_process(tmp_path)
    assert "native: True True" in out
    (built,) = tmp_path.iterdir()
    assert built.name.startswith("cpu_kernels-") and built.suffix == ".so"
    stamp = built.stat().st_mtime_ns
    assert "native: True True" in _fresh_process(tmp_path)[0]
    assert list(tmp_path.iterdir()) == [built] and built.stat().st_mtime_ns == stamp  # reused


def test_a_damaged_cached_library_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNETV2_JAX_KERNEL_CACHE", str(tmp_path))
    damaged = cpu_kernels.library_path()
    damaged.write_bytes(b"not a shared library")
    assert "native: True True" in _fresh_process(tmp_path)[0]
    assert list(tmp_path.iterdir()) == [damaged] and damaged.stat().st_size > 1000
