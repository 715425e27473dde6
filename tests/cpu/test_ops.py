"""The CPU ops (`cpu/ops.py`) against XLA's (`models/ops.py`): pooling by halving equals the
sum, the gate's gradient equals autodiff's, the model holds one ops object chosen by its conv
impl, and `models/` reaches the `cpu` package only through `models/ops.py`."""

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnetv2_jax.cpu import ops as cpu_ops
from effnetv2_jax.cpu.ops import gate_channels, spatial_sum_by_halving
from effnetv2_jax.models import ops

MODELS = Path(__file__).resolve().parents[2] / "effnetv2_jax" / "models"


@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (2, 3, 5, 4), (2, 7, 7, 8), (1, 8, 8, 2)])
def test_spatial_sum_by_halving_is_the_spatial_sum(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(jax.jit(spatial_sum_by_halving)(x), x.sum(axis=(1, 2)),
                               rtol=1e-5, atol=1e-5)
    low = jax.jit(spatial_sum_by_halving)(jnp.asarray(x, jnp.bfloat16))
    assert low.dtype == jnp.float32 and low.shape == (shape[0], shape[3])


def test_gate_channels_gradients_equal_autodiff():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    gate = rng.uniform(0.1, 0.9, (2, 4)).astype(np.float32)
    cot = rng.standard_normal(x.shape).astype(np.float32)

    def grads(fn):
        return jax.jit(jax.grad(lambda x, g: jnp.sum(fn(x, g) * cot), argnums=(0, 1)))(x, gate)

    ours, plain = grads(gate_channels), grads(lambda x, g: x * g[:, None, None, :])
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert float(np.abs(ours[1]).max()) > 1e-2


@pytest.mark.parametrize("train", [False, True])
def test_cpu_pooling_and_gate_equal_xla_ops(train):
    x = np.random.default_rng(2).standard_normal((2, 5, 6, 8)).astype(np.float32)
    gate = np.random.default_rng(3).uniform(0.1, 0.9, (2, 8)).astype(np.float32)
    for op in (lambda o: o.spatial_mean(x, train=train), lambda o: o.gate(x, gate)):
        np.testing.assert_allclose(jax.jit(lambda: op(cpu_ops.CPU))(),
                                   jax.jit(lambda: op(ops.XLA))(), rtol=1e-5, atol=1e-5)


def test_ops_are_static_values_chosen_by_impl():
    assert ops.ops_for("xla") is ops.XLA and ops.ops_for("cpu") is cpu_ops.CPU
    # Compared and hashed by type: a model's graph definition is the same in every process.
    assert cpu_ops.CpuOps() == cpu_ops.CPU != ops.XLA == ops.XlaOps()
    assert hash(cpu_ops.CpuOps()) == hash(cpu_ops.CPU)
    assert ops.XLA.mbconv_inference(None, None) is None  # XLA computes it layer by layer


def test_models_reach_the_cpu_package_only_through_ops():
    """The architecture (`models/`) names the CPU layer in one place: `models/ops.py`."""
    importers = {}
    for path in sorted(MODELS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "effnetv2_jax.cpu" or n.startswith("effnetv2_jax.cpu.") for n in names):
                importers.setdefault(path.name, []).extend(names)
    assert importers == {"ops.py": ["effnetv2_jax.cpu"]}, importers
