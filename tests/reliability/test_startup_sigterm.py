"""SIGTERM at several moments of a training run's start-up (the real command line): the run
ends with exit code 0, saying it was preempted during start-up, and writes no checkpoint, not
even a partial one (train/preemption.py). Before the handling was installed early, a SIGTERM
here ended the process with -15. A run resumed from a checkpoint and stopped the same way
leaves its checkpoints as they were."""

import re
import signal
import time

import pytest

import harness

pytestmark = pytest.mark.slow  # real start-ups of the training command (~20-40 s each)

# Moments in start-up order, as the run shows them: flags parsed (log); jax.distributed and
# devices (log: set-up begins); the checkpoint folder made (set-up: restore, then the state on
# the mesh); the first train step compiled (log).
MARKERS = {"flags parsed": r"\] config:",
           "devices found (set-up)": r"process 0 of 1",
           "checkpoint folder made (restore)": "checkpoints/",
           "first stage compiling": r"train step: [\d.]+ MiB per device"}


def reached(run, workdir, moment) -> bool:
    if MARKERS[moment] == "checkpoints/":
        return (workdir / "checkpoints").is_dir()
    return bool(re.search(MARKERS[moment], run.log()))


def assert_clean_start_up_stop(run, workdir, expect_steps=()):
    code = run.wait()
    log = run.log()
    assert code == 0, f"exit code {code}; log tail:\n{log[-3000:]}"
    assert "preempted during start-up" in log, log[-3000:]
    assert not re.search(r"\[\d+\][^\n]*train/loss", log), "no step was trained"
    assert harness.saved_steps(workdir) == list(expect_steps)
    # Nothing half-written: no Orbax temporary step directory either.
    checkpoints = workdir / "checkpoints"
    leftovers = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
    assert sorted(leftovers) == sorted(str(s) for s in expect_steps), leftovers


@pytest.mark.parametrize("moment", list(MARKERS))
def test_sigterm_at_a_start_up_marker(tmp_path, compile_cache, moment):
    run = harness.launch(tmp_path, compile_cache, "--config.train.num_steps=400")
    assert run.wait_for(lambda: reached(run, tmp_path, moment), timeout=300), run.log()[-3000:]
    run.signal(signal.SIGTERM)
    assert_clean_start_up_stop(run, tmp_path)


@pytest.mark.parametrize("delay_s", [0.3, 1.5])
def test_sigterm_seconds_after_launch(tmp_path, compile_cache, delay_s):
    """Early, in the imports: before this change the process died of the signal (-15)."""
    run = harness.launch(tmp_path, compile_cache, "--config.train.num_steps=400")
    time.sleep(delay_s)
    assert run.process.poll() is None
    run.signal(signal.SIGTERM)
    assert_clean_start_up_stop(run, tmp_path)


def test_sigterm_while_a_resumed_run_starts_leaves_its_checkpoints(tmp_path, compile_cache):
    first = harness.launch(tmp_path, compile_cache, "--config.train.num_steps=400")
    first.wait_for(lambda: harness.saved_steps(tmp_path))
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.log()[-3000:]
    saved = harness.saved_steps(tmp_path)
    run = harness.launch(tmp_path, compile_cache, "--config.train.num_steps=400")
    run.wait_for(lambda: "resumed from step" in run.log())
    run.signal(signal.SIGTERM)
    assert_clean_start_up_stop(run, tmp_path, expect_steps=saved)
    assert harness.resumed_step(run.log()) == saved[-1]


def test_sigterm_during_evaluation_start_up_ends_it_as_before(tmp_path, compile_cache):
    """mode=eval writes nothing to resume from: SIGTERM keeps its default action there."""
    run = harness.launch(tmp_path, compile_cache, "--mode=eval")
    run.wait_for(lambda: "process 0 of 1" in run.log())
    run.signal(signal.SIGTERM)
    assert run.wait() == -signal.SIGTERM


def test_sigterm_to_one_of_two_processes_during_start_up_saves_both_at_one_step(tmp_path,
                                                                                 compile_cache):
    """Recorded before jax.distributed starts, the SIGTERM is handed to JAX's preemption sync
    service: both processes train to the step it agrees on, save it and exit 0."""
    runs = harness.launch_two_processes(tmp_path, compile_cache, 11,
                                        "--config.train.num_steps=400")
    assert runs[1].wait_for(lambda: "] config:" in runs[1].log(), timeout=300)
    runs[1].signal(signal.SIGTERM)  # before its jax.distributed.initialize
    saved = harness.preempted_steps(runs, timeout=600)
    assert saved[0] == saved[1] < 400
    assert "passing the SIGTERM received during start-up" in runs[1].log()
    assert harness.saved_steps(tmp_path)[-1] == saved[0]
