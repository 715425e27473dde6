"""The C++ kernels: the depthwise weight gradient equals the XLA formulation and float64 numpy,
the materialising identity is one; the model uses them with one device only (no gathers in a
sharded step); without a compiler (or switched off) it falls back to XLA code with a warning,
same values."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnetv2_jax.cpu import convs, kernels
from effnetv2_jax.models.ops import ops_for


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
    assert kernels.available(), "g++ and jaxlib's FFI headers are on every supported CPU host"
    rng = np.random.default_rng(n * 100 + c)
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
    xp = convs._pad_same(x, k, stride)
    dy = jnp.asarray(rng.standard_normal((n, -(-h // stride), -(-w // stride), c)), jnp.float32)
    native = jax.jit(kernels.depthwise_kernel_grad, static_argnums=(2, 3))(xp, dy, k, stride)
    xla = convs._depthwise_kernel_grad(xp, dy, k, stride).reshape(k, k, c)
    exact = _exact(xp, dy, k, stride)
    assert native.shape == (k, k, c) and native.dtype == jnp.float32
    np.testing.assert_allclose(native, exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(native, xla, rtol=1e-5, atol=1e-5)


def test_materialize_is_the_identity_aliased_or_copied():
    assert kernels.available()
    for x in (jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4),
              jnp.linspace(-3, 3, 60, dtype=jnp.bfloat16).reshape(3, 20),
              jnp.arange(7, dtype=jnp.int32)):
        # Aliased: the operand is a temporary with no other reader.
        np.testing.assert_array_equal(jax.jit(lambda x: kernels.materialize(x * 2))(x),
                                      np.asarray(x) * 2)
        # Copied: the operand is a parameter that is not donated, and still read afterwards.
        both = jax.jit(lambda x: (kernels.materialize(x), x + 1))(x)
        np.testing.assert_array_equal(both[0], x)
        np.testing.assert_array_equal(both[1], np.asarray(x) + 1)
    batch = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(jax.vmap(kernels.materialize)(batch), batch)
    # Differentiable as the identity, forward and reverse mode.
    np.testing.assert_array_equal(
        jax.grad(lambda x: jnp.sum(kernels.materialize(x) ** 2))(batch), 2 * batch)
    np.testing.assert_array_equal(
        jax.jvp(kernels.materialize, (batch,), (jnp.ones_like(batch),))[1], 1.0)


def test_spatial_mean_equals_the_mean_and_differentiates():
    assert kernels.available()
    for shape in ((3, 5, 7, 11), (1, 1, 1, 4), (5, 4, 4, 300)):
        x = jax.random.normal(jax.random.key(shape[-1]), shape)
        np.testing.assert_allclose(jax.jit(kernels.spatial_mean)(x), x.mean((1, 2)),
                                   rtol=1e-6, atol=1e-6)
    tangent = jnp.ones_like(x)
    np.testing.assert_allclose(jax.jvp(kernels.spatial_mean, (x,), (tangent,))[1], 1.0)
    np.testing.assert_allclose(jax.grad(lambda x: kernels.spatial_mean(x).sum())(x),
                               np.full(x.shape, 1 / 16), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(kernels.spatial_mean)(x[None])[0], x.mean((1, 2)),
                               rtol=1e-6, atol=1e-6)


def test_with_several_devices_the_sharded_gradient_is_xla_code_without_gathers():
    """The custom calls have no partitioning rule: in a batch-sharded step (conftest gives 4
    devices) the model keeps to XLA's code, so nothing is gathered onto every device."""
    assert jax.device_count() == 4 and not kernels.enabled()
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    x = jax.device_put(jnp.asarray(np.random.default_rng(3).standard_normal((8, 9, 9, 12)),
                                   jnp.float32),
                       jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    kernel = jnp.asarray(np.random.default_rng(4).standard_normal((3, 3, 1, 12)), jnp.float32)

    def loss(impl):
        return lambda k, x: jnp.sum(jnp.sin(ops_for(impl).depthwise_conv(x, k, 2)))

    grad = jax.jit(jax.grad(loss("cpu")))
    optimised = grad.lower(kernel, x).compile().as_text()
    assert "all-gather" not in optimised and "custom-call" not in optimised
    np.testing.assert_allclose(grad(kernel, x), jax.grad(loss("xla"))(kernel, x),
                               rtol=1e-4, atol=1e-4)


# A process registers one library, so the fallbacks are checked in fresh processes, as a user
# without a compiler would start one: the gradient comes from XLA code and equals XLA's convs.
_FRESH_PROCESS = """
import jax, jax.numpy as jnp, numpy as np
from effnetv2_jax.cpu import kernels
from effnetv2_jax.models.ops import ops_for
x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 9, 12)), jnp.float32)
kernel = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3, 1, 12)), jnp.float32)
def loss(impl, stride):
    return lambda x, k: jnp.sum(jnp.sin(ops_for(impl).depthwise_conv(x, k, stride)))
for stride in (1, 2):
    grad = jax.jit(jax.grad(loss("cpu", stride), argnums=(0, 1)))
    for got, want in zip(grad(x, kernel), jax.grad(loss("xla", stride), argnums=(0, 1))(x, kernel)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
text = grad.lower(x, kernel).as_text()
print("native:", kernels.available(),
      all(t in text for t in (kernels.DEPTHWISE_KERNEL_GRAD, kernels.MATERIALIZE)))
# The forward's output goes through the identity kernel in the optimised HLO too, once.
mean = jax.jit(lambda x, k: jnp.mean(ops_for("cpu").depthwise_conv(x, k, 1), (1, 2)))
print("materialised:", mean.lower(x, kernel).compile().as_text().count(
    'custom_call_target="effnetv2_materialize"'))
# A tiny V2 with a fused 3x3 stride-1 conv of 32 channels (the Winograd path) after
# squeeze-excite, and MBConv blocks with it: at inference the pooling, Winograd and fused MBConv
# (with squeeze-excite) kernels run, and the logits equal the XLA code's (kernels switched off
# at trace time); so does a training gradient.
import effnetv2_jax
from flax import nnx
model = effnetv2_jax.create_model(
    "efficientnetv2-s", feature_size=64, num_classes=7, block_strings=(
        "r1_k3_s1_e1_i32_o32_c1_se0.25", "r1_k3_s2_e4_i32_o24_se0.25", "r1_k3_s2_e4_i24_o32_se0.25"))
graph, state = nnx.split(model)
images = jax.random.normal(jax.random.key(0), (3, 40, 40, 3))
forward = lambda s, x: nnx.merge(graph, s)(x, train=False)
loss = lambda s, x: jnp.sum(nnx.merge(graph, s)(x, train=True, key=jax.random.key(1)) ** 2)
native, native_grad = jax.jit(forward), jax.jit(jax.grad(loss))
text = native.lower(state, images).as_text()
grad_text = native_grad.lower(state, images).as_text()
logits, grads = native(state, images), native_grad(state, images)
kernels.enabled = lambda: False
# New function objects: jax.jit caches on the function, and would not trace again.
gap = float(jnp.abs(logits - jax.jit(lambda s, x: forward(s, x))(state, images)).max())
# Relative to each gradient's size, at least 0.01 (a BN bias before another BN has a zero one).
grad_gaps = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max() / max(jnp.abs(b).max(), 1e-2)),
                         grads, jax.jit(jax.grad(lambda s, x: loss(s, x)))(state, images))
# (The two differ a little where the kernels ran: Winograd rounds differently.)
print("eval kernel:", kernels.SPATIAL_MEAN in text,
      kernels.MBCONV_DEPTHWISE_SE_INFERENCE in text,
      0 < gap < 1e-5 if kernels.available() else gap == 0, gap)
print("winograd:", kernels.WINOGRAD_INPUT in text,
      kernels.WINOGRAD_INPUT_ADJOINT in grad_text, max(jax.tree.leaves(grad_gaps)) < 1e-4,
      max(jax.tree.leaves(grad_gaps)))
"""


def _fresh_process(tmp_path, **env):
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS], capture_output=True, text=True,
                          env={**os.environ, "EFFNETV2_JAX_KERNEL_CACHE": str(tmp_path),
                               "JAX_NUM_CPU_DEVICES": "1", **env},
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


@pytest.mark.slow  # a fresh process per setting
@pytest.mark.parametrize("env, why", [
    ({"CXX": "no-such-compiler"}, "no C++ compiler 'no-such-compiler' on PATH"),
    ({"CXX": "false"}, "false failed"),
    ({"EFFNETV2_JAX_NATIVE_KERNELS": "0"}, None)])
def test_without_the_kernels_xla_code_gives_the_same_gradient(env, why, tmp_path):
    out, err = _fresh_process(tmp_path, **env)
    assert "native: False False" in out and "materialised: 0" in out
    assert "eval kernel: False False True" in out and "winograd: False False True" in out
    if why:
        assert why in err and "using XLA's code" in err
    assert list(tmp_path.iterdir()) == []  # nothing built, no half-written file left behind


@pytest.mark.slow  # builds the kernels in fresh processes
def test_the_build_is_cached_per_source_and_machine(tmp_path):
    """One device: the gradient (strides 1 and 2) uses both kernels and equals XLA's convs,
    and the depthwise output is materialised once."""
    out, _ = _fresh_process(tmp_path)
    assert "native: True True" in out and "materialised: 1" in out
    assert "eval kernel: True True True" in out and "winograd: True True True" in out, out
    (built,) = tmp_path.iterdir()
    assert built.name.startswith("cpu_kernels-") and built.suffix == ".so"
    stamp = built.stat().st_mtime_ns
    assert "native: True True" in _fresh_process(tmp_path)[0]
    assert list(tmp_path.iterdir()) == [built] and built.stat().st_mtime_ns == stamp  # reused


@pytest.mark.slow  # builds the kernels in fresh processes
def test_a_damaged_cached_library_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNETV2_JAX_KERNEL_CACHE", str(tmp_path))
    damaged = kernels.library_path()
    damaged.write_bytes(b"not a shared library")
    assert "native: True True" in _fresh_process(tmp_path)[0]
    assert list(tmp_path.iterdir()) == [damaged] and damaged.stat().st_size > 1000
