"""End to end: train_and_evaluate on 4 CPU devices, multi-host, fine-tuning.

All runs use tests/configs/tiny.py: 2 blocks, 32-40 px, 2 progressive stages, 6 steps. The
fault tests (SIGTERM, SIGKILL, damaged checkpoints, full disks, bad data) are in
tests/reliability/.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from effnetv2_jax import data
from effnetv2_jax.train import loop
from effnetv2_jax.train import run as run_setup
from effnetv2_jax.train.checkpoint import CheckpointError, read_state

sys.path.insert(0, str(Path(__file__).parent / "configs"))
import tiny  # noqa: E402

# Whole training runs on a 4-device mesh, one of them as two processes: minutes.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def final_params(workdir, step=6):
    return jax.tree.map(np.asarray, read_state(str(Path(workdir) / "checkpoints" / str(step))))


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for (path, x), y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for every run here: restarts skip compiling, as they
    do for users (the cache lives in the workdir by default)."""
    return str(tmp_path_factory.mktemp("compile_cache"))


tiny_config = tiny.with_compile_cache


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compile_cache):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    results = loop.train_and_evaluate(tiny_config(compile_cache), str(workdir))
    return workdir, results


def test_train_and_evaluate_on_four_devices(uninterrupted):
    workdir, results = uninterrupted
    assert jax.device_count() == 4
    assert results["eval/examples"] == 20           # every eval example exactly once
    for key in ("eval/raw_top1", "eval/ema_top1", "eval/raw_top5", "eval/ema_loss"):
        assert 0.0 <= results[key] <= (1.0 if "top" in key else 100.0)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 6
    state = final_params(workdir)
    assert int(state["step"]) == 6 and int(state["nonfinite_step"]) == -1
    assert list(workdir.glob("events.out.tfevents*")), "TensorBoard summaries are written"


def _main(workdir, compile_cache, *extra, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "effnetv2_jax.main", "--config=tests/configs/tiny.py",
         f"--workdir={workdir}", f"--config.checkpoint.compile_cache_dir={compile_cache}",
         *extra], cwd=REPO, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class _JoinedBatches:
    """The batches of several simulated processes, concatenated in process order: the global
    batch a multi-process run assembles with make_array_from_process_local_data."""

    def __init__(self, parts):
        self.parts = parts

    def __iter__(self):
        return self

    def __next__(self):
        batches = [next(part) for part in self.parts]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def close(self):
        for part in self.parts:
            part.close()


def _as_two_processes(make_iterator):
    def make(*args, process_index, process_count, **kwargs):
        assert (process_index, process_count) == (0, 1)
        return _JoinedBatches([make_iterator(*args, process_index=i, process_count=2, **kwargs)
                               for i in range(2)])
    return make


def test_two_processes_match_one_process_on_four_devices(tmp_path, monkeypatch, compile_cache):
    """2 processes x 2 CPU devices (jax.distributed on localhost) against 1 process x 4 devices
    fed the same global batches (each process reads its own part of the data, so the
    single-process run reads both parts and concatenates them)."""
    port = 20000 + os.getpid() % 20000
    multi_dir, single_dir = tmp_path / "multi", tmp_path / "single"
    processes = [_main(multi_dir, compile_cache,
                       f"--config.distributed.coordinator_address=localhost:{port}",
                       "--config.distributed.num_processes=2",
                       f"--config.distributed.process_id={i}",
                       env={"JAX_NUM_CPU_DEVICES": "2"}) for i in range(2)]
    monkeypatch.setattr(data, "make_train_iterator", _as_two_processes(data.make_train_iterator))
    monkeypatch.setattr(data, "make_eval_iterator", _as_two_processes(data.make_eval_iterator))
    single_results = loop.train_and_evaluate(tiny_config(compile_cache), str(single_dir))
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out
    # Both processes wrote one checkpoint together; it restores onto one device here.
    single, multi = final_params(single_dir), final_params(multi_dir)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(multi)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    eval_line = [line for line in outputs[0].splitlines() if line.startswith("eval/")]
    assert eval_line, outputs[0]
    values = dict(item.split("=") for item in eval_line[-1].split())
    assert float(values["eval/examples"]) == 20
    assert float(values["eval/raw_loss"]) == pytest.approx(single_results["eval/raw_loss"],
                                                           rel=1e-4)


def test_fine_tune_warm_starts_from_a_checkpoint_with_a_new_head(uninterrupted, tmp_path,
                                                                 compile_cache):
    source = final_params(uninterrupted[0])
    config = tiny_config(compile_cache)
    config.data.synthetic_num_classes = 3            # a new class count: a new head
    config.train.init_checkpoint = str(uninterrupted[0])
    run = run_setup.setup(config, str(tmp_path))
    params = jax.device_get(run.state.params)
    np.testing.assert_array_equal(params["stem_conv"]["kernel"],
                                  source["ema_params"]["stem_conv"]["kernel"])
    np.testing.assert_array_equal(jax.device_get(run.state.batch_stats)["head_bn"]["mean"],
                                  source["ema_batch_stats"]["head_bn"]["mean"])
    assert params["classifier"]["kernel"].shape == (32, 3)
    run.checkpointer.close()

    config.model.block_strings = ("r1_k3_s1_e1_i8_o8_c1", "r1_k3_s2_e4_i8_o24_se0.25")
    with pytest.raises(CheckpointError, match=r"does not fit this model.*project_conv"):
        run_setup.setup(config, str(tmp_path / "other"))
