"""The package's XLA:CPU flag: added on import for the measured jaxlib, never over the user's."""

import os
import subprocess
import sys

from effnetv2_jax import xla_cpu_flags


def test_adds_the_flag_once_and_respects_the_user(monkeypatch):
    monkeypatch.delenv("EFFNETV2_JAX_KEEP_XLA_FLAGS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert xla_cpu_flags.apply()
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                       + xla_cpu_flags.YNN_FLAG)
    assert not xla_cpu_flags.apply()  # already there: not added twice
    mine = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
    monkeypatch.setenv("XLA_FLAGS", mine)
    assert not xla_cpu_flags.apply() and os.environ["XLA_FLAGS"] == mine
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("EFFNETV2_JAX_KEEP_XLA_FLAGS", "1")
    assert not xla_cpu_flags.apply() and os.environ["XLA_FLAGS"] == ""


def test_a_fresh_process_runs_with_it():
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "EFFNETV2_JAX_KEEP_XLA_FLAGS")}
    code = ("import os, effnetv2_jax, jax, jax.numpy as jnp; "
            "print(os.environ['XLA_FLAGS']); print(float(jnp.ones((64, 64)).dot(jnp.ones(64))[0]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [xla_cpu_flags.YNN_FLAG, "64.0"]
