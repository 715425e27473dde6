"""Training with the workdir on gs://, against a local GCS emulator (the `gcs` fixture of
tests/conftest.py): Orbax writes through tensorstore, the step cache and TensorBoard events
through etils.epath/gcsfs. The faults of the local-disk tests, on a bucket: SIGKILL inside an
asynchronous save, SIGTERM to one of two processes, a damaged newest step; then the stored step
cache read back from gs://, and train -> load_checkpoint -> predict -> export through gs://."""

import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from etils import epath

import harness
import tiny  # tests/configs (reliability/conftest.py puts it on the path)
from effnetv2_jax import paths
from effnetv2_jax.train import loop
from effnetv2_jax.train import run as run_setup
from effnetv2_jax.train import sharding
from effnetv2_jax.train.checkpoint import Checkpointer, abstract_like, read_state

pytestmark = pytest.mark.slow  # real training runs on the emulator: minutes


def saved_steps(workdir: epath.Path) -> list[int]:
    """Committed steps (Orbax's commit marker on gs://) in a gs:// workdir."""
    directory = paths.resolve(workdir / "checkpoints")     # as other processes left it
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and (p / "commit_success.txt").exists())


def final_state(workdir: epath.Path, step: int = harness.TINY_STEPS):
    directory = paths.resolve(workdir / "checkpoints" / str(step))
    return jax.tree.map(np.array, read_state(str(directory)))


def launch(workdir, log_dir, cache_dir, *overrides, killpoint=None, env=None, name="run"):
    return harness.Run(harness.main_args(workdir, cache_dir, *overrides, killpoint=killpoint),
                       log_dir / f"{name}.log", env=env)


def test_sigkill_inside_an_async_save_to_a_bucket_then_restart_is_bitwise_exact(
        gcs_dir, tmp_path, reference, compile_cache):
    killed = launch(gcs_dir, tmp_path, compile_cache, killpoint="checkpoint:4", name="killed")
    assert killed.wait() == -9, killed.log()[-3000:]
    assert "killpoint: SIGKILL inside the asynchronous write of step 4" in killed.log()
    # Step 4's arrays are on the bucket, its commit marker is not: it does not count.
    assert (gcs_dir / "checkpoints" / "4").exists()
    assert saved_steps(gcs_dir) == [2, 3]
    restarted = launch(gcs_dir, tmp_path, compile_cache, name="restarted")
    assert restarted.wait() == 0, restarted.log()[-3000:]
    assert harness.resumed_step(restarted.log()) == 3
    assert harness.mismatching_arrays(reference[1], final_state(gcs_dir)) == []


def test_sigterm_to_one_of_two_processes_saves_both_at_the_same_step_on_a_bucket(
        gcs_dir, tmp_path, compile_cache):
    runs = harness.launch_two_processes(gcs_dir, compile_cache, 11,
                                        "--config.train.num_steps=400", log_dir=tmp_path)
    runs[0].wait_for(lambda: 4 in saved_steps(gcs_dir), timeout=400, poll=0.5)
    runs[1].signal(signal.SIGTERM)           # only one host is preempted
    saved = harness.preempted_steps(runs)
    assert saved[0] == saved[1] < 400
    assert saved[0] in saved_steps(gcs_dir)
    assert (gcs_dir / "checkpoints" / str(saved[0]) / "state").is_dir()


def _files(directory: epath.Path):
    for child in directory.iterdir():
        yield from _files(child) if child.is_dir() else [child]


def test_a_damaged_newest_step_on_a_bucket_falls_back_to_the_previous(
        gcs_dir, tmp_path, reference, compile_cache, caplog):
    paths.copy_tree(reference[0] / "checkpoints", gcs_dir / "checkpoints")
    for step in harness.saved_steps(reference[0]):    # a copy commits every step on gs://
        (gcs_dir / "checkpoints" / str(step) / "commit_success.txt").write_text("copied")
    steps = saved_steps(gcs_dir)
    newest = steps[-1]
    data = [f for f in _files(gcs_dir / "checkpoints" / str(newest) / "state")
            if f.parent.name == "d"]
    assert data, "no OCDBT data files in the newest step"
    for f in data:                                    # truncate its array data
        content = f.read_bytes()
        f.write_bytes(content[: len(content) // 2])
    fresh = run_setup.setup(tiny.with_compile_cache(compile_cache), str(tmp_path / "fresh"))
    fresh.checkpointer.close()
    target = abstract_like(fresh.state, sharding.replicated(fresh.mesh))
    caplog.set_level("WARNING")
    checkpointer = Checkpointer(f"{gcs_dir}/checkpoints")
    _, _, step = checkpointer.restore(target)
    checkpointer.close()
    assert step == steps[-2]
    skipped = [r.getMessage() for r in caplog.records if "skipping it" in r.getMessage()]
    assert skipped and f"checkpoint step {newest} " in skipped[0], skipped
    assert [f.read_bytes() for f in data], "the damaged step is left as it was, not deleted"


def test_the_stored_step_cache_is_read_back_from_a_bucket(gcs_dir, tmp_path, reference,
                                                        compile_cache, caplog):
    """A compile cache (executables and stored traces) on gs://: a second run in a new
    workdir compiles every step from the traces the first stored, and ends bitwise equal.
    In this process, as test_preemption's restarts: the trace key includes a digest of the
    package's sources, taken once per process, so edits to a shared checkout between two
    processes cannot change it."""
    config = tiny.with_compile_cache(compile_cache)
    config.checkpoint.compile_cache_dir = f"{gcs_dir}/compile_cache"
    caplog.set_level("INFO")
    try:
        loop.train_and_evaluate(config, str(tmp_path / "first"))
        stored = list(paths.resolve(gcs_dir / "compile_cache" / "exported").iterdir())
        assert stored, "traces stored on the bucket"
        caplog.clear()
        loop.train_and_evaluate(config, str(gcs_dir / "second"))
    finally:   # later runs of this process go back to the local cache
        run_setup._enable_compile_cache(tiny.with_compile_cache(compile_cache), str(tmp_path))
    compiles = [r.getMessage() for r in caplog.records if " compiled in " in r.getMessage()]
    assert compiles and all("(stored trace)" in m for m in compiles), compiles
    assert harness.mismatching_arrays(reference[1], final_state(gcs_dir / "second")) == []


def test_train_load_predict_export_through_a_bucket(gcs_dir, tmp_path, reference,
                                                    compile_cache):
    """Issue #27's remote-path round trip: every path below is gs://."""
    import effnetv2_jax  # noqa: PLC0415
    from effnetv2_jax.export.jax_export import load_jax_export  # noqa: PLC0415

    run = launch(gcs_dir, tmp_path, compile_cache, name="train")
    assert run.wait() == 0, run.log()[-3000:]
    loaded = effnetv2_jax.load_checkpoint(str(gcs_dir))
    assert loaded.step == harness.TINY_STEPS
    local = effnetv2_jax.load_checkpoint(str(reference[0]))   # the same run, on local disk
    images = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), np.uint8)
    remote_predictions = effnetv2_jax.predict(loaded, list(images), top_k=2)
    local_predictions = effnetv2_jax.predict(local, list(images), top_k=2)
    np.testing.assert_array_equal(remote_predictions.indices, local_predictions.indices)
    np.testing.assert_array_equal(remote_predictions.probabilities,
                                  local_predictions.probabilities)
    exported = gcs_dir / "export" / "model.jax"
    result = subprocess.run(
        [sys.executable, "-m", "effnetv2_jax.export", f"--checkpoint={gcs_dir}",
         "--format=jax_export", f"--output={exported}"],
        cwd=harness.REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert exported.exists() and (gcs_dir / "export" / "model.jax.meta.json").exists()
    with paths.local_copy(exported) as path:
        assert load_jax_export(path) is not None


def test_the_readme_quickstart_on_a_bucket_writes_events_and_resumes(gcs_dir, tmp_path):
    """README command 1 with --workdir=gs://...: preempted (SIGTERM) after its first
    checkpoint, run again, it resumes there from the traces stored on the bucket, reaches the
    quickstart's accuracy, and its TensorBoard events are on the bucket."""
    command = [sys.executable, "-m", "effnetv2_jax.main", "--config=configs/quickstart.py",
               f"--workdir={gcs_dir}", f"--config.data.data_dir={tmp_path / 'tfds'}"]
    first = harness.Run(command, tmp_path / "first.log")
    first.wait_for(lambda: saved_steps(gcs_dir), timeout=900, poll=1.0)
    first.signal(signal.SIGTERM)
    assert first.wait(900) == 0, first.log()[-3000:]
    preempted = int(re.findall(r"preempted: saved step (\d+)", first.log())[-1])
    second = harness.Run(command, tmp_path / "second.log")
    assert second.wait(900) == 0, second.log()[-3000:]
    log = second.log()
    assert harness.resumed_step(log) == preempted
    compiles = [line for line in log.splitlines() if " compiled in " in line]
    assert compiles and all("(stored trace)" in line for line in compiles), compiles
    final = [line for line in log.splitlines() if line.startswith("eval/")][-1]
    metrics = {k: float(v) for k, v in (item.split("=") for item in final.split())}
    assert metrics["eval/ema_top1"] >= 0.97, final
    events = sorted(paths.resolve(gcs_dir).glob("events.out.tfevents*"))
    assert len(events) == 2, events                   # one file per run
    from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

    local = tmp_path / events[-1].name
    local.write_bytes(events[-1].read_bytes())
    accumulator = event_accumulator.EventAccumulator(
        str(local), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    steps = [e.step for e in accumulator.Tensors("train/loss")]
    assert steps and min(steps) > preempted, steps    # the second run's own steps
    assert "eval/ema_top1" in accumulator.Tags()["tensors"]
