"""Two runs of the same config on the same machine end with bitwise the same training state.

Each run is a fresh process of the real command line (`python -m effnetv2_jax.main
--config=tests/configs/tiny.py`) with its own workdir and no compilation cache, so the two share
nothing but the machine: initialisation, data order, augmentation and dropout come from
config.seed (keys folded in by step), and the compiled programs and the C++ kernels are
deterministic for a given machine. One CPU device, as the quickstart runs, so the cpu
conv_impl's kernels are in the step. (Four devices: tests/reliability/test_kill.py restarts a run
killed before its first checkpoint from nothing and compares it bitwise with a reference run.)
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from effnetv2_jax.train.checkpoint import read_state

REPO = Path(__file__).resolve().parents[2]
STEPS = 6  # tests/configs/tiny.py

pytestmark = pytest.mark.slow  # two tiny training runs: about a minute each on a loaded 2-core machine


def start(workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
    return subprocess.Popen([sys.executable, "-m", "effnetv2_jax.main",
                             "--config=tests/configs/tiny.py", f"--workdir={workdir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_runs_give_bitwise_the_same_state(tmp_path):
    runs = [start(tmp_path / name) for name in ("a", "b")]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    for run, out in zip(runs, outputs):
        assert run.returncode == 0, out[-3000:]
    states = [read_state(str(tmp_path / name / "checkpoints" / str(STEPS))) for name in "ab"]
    leaves = [jax.tree_util.tree_leaves_with_path(s) for s in states]
    assert len(leaves[0]) == len(leaves[1]) > 20
    different = [jax.tree_util.keystr(path) for (path, x), (_, y) in zip(*leaves)
                 if not np.array_equal(np.asarray(x), np.asarray(y))]
    assert different == [], f"not bitwise equal: {different}"
    evals = [[line for line in out.splitlines() if line.startswith("eval/")] for out in outputs]
    assert evals[0] and evals[0] == evals[1]
