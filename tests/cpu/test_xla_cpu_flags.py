"""The XLA:CPU flag: added by entry points for the measured jaxlib, never over the user's
setting, with an opt-out; importing the package adds nothing (tests/test_entry_points.py)."""

import os
import subprocess
import sys

from effnetv2_jax.cpu import xla_flags


def test_adds_the_flag_once_and_respects_the_user(monkeypatch):
    monkeypatch.delenv(xla_flags.OPT_OUT_ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert xla_flags.apply()
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                       + xla_flags.YNN_FLAG)
    assert not xla_flags.apply()  # already there: not added twice
    mine = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
    monkeypatch.setenv("XLA_FLAGS", mine)
    assert not xla_flags.apply() and os.environ["XLA_FLAGS"] == mine
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv(xla_flags.OPT_OUT_ENV, "1")
    assert not xla_flags.apply() and os.environ["XLA_FLAGS"] == ""


def test_an_entry_point_runs_with_it_and_can_opt_out():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT_ENV)}
    code = ("import os, effnetv2_jax.cpu as cpu; cpu.configure_process(restart_allocator=False); "
            "import jax, jax.numpy as jnp; print(os.environ.get('XLA_FLAGS', '-')); "
            "print(float(jnp.ones((64, 64)).dot(jnp.ones(64))[0]))")

    def run(**extra):
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra},
                              capture_output=True, text=True, check=True).stdout.split()

    assert run() == [xla_flags.YNN_FLAG, "64.0"]
    assert run(**{xla_flags.OPT_OUT_ENV: "1"}) == ["-", "64.0"]
