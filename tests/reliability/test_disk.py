"""Disk trouble during a save: a read-only workdir (permission bits, enforced even for root by
dropping its override capability) and a full disk (RLIMIT_FSIZE: writes past the limit fail
with EFBIG). Each stops with a clear error; the steps saved before are intact; no half-written
step looks valid."""

import re
import signal

import pytest

import harness
from effnetv2_jax.train.checkpoint import Checkpointer

pytestmark = pytest.mark.slow  # real training runs whose disk fails mid-save


def check_aftermath(run, tmp_path, cause):
    code = run.wait()
    log = run.log()
    assert code not in (0, -signal.SIGKILL) and code is not None, log[-3000:]
    # The message names the step that failed, the OS's cause and the steps left intact (other
    # threads' output may interleave with the line, so it is searched for, not split out).
    errors = re.findall(r"CheckpointSaveError: (could not write checkpoint step \d+ to \S+ "
                        r"\(([^)]*)\)[^\n]*)", log)
    assert errors, log[-3000:]
    assert any(cause in found_cause for _, found_cause in errors), errors
    assert any("are intact" in message for message, _ in errors), errors
    steps = harness.saved_steps(tmp_path)
    assert steps, "the checkpoints saved before the failure are still there"
    # Orbax lists only committed steps; each must restore exactly.
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    assert checkpointer.all_steps() == steps
    checkpointer.close()
    for step in steps:
        state = harness.final_state(tmp_path, step)
        assert int(state["step"]) == step


def long_run(tmp_path, compile_cache, *overrides, **kwargs):
    return harness.launch(tmp_path, compile_cache, "--config.train.num_steps=400", *overrides,
                          **kwargs)


def test_workdir_becomes_read_only_during_training(tmp_path, compile_cache):
    run = long_run(tmp_path / "work", compile_cache, preexec_fn=harness.without_root_override)
    run.wait_for(lambda: len(harness.saved_steps(tmp_path / "work")) >= 2)
    harness.make_read_only(tmp_path / "work")
    try:
        check_aftermath(run, tmp_path / "work", "Permission denied")
    finally:
        harness.make_writable(tmp_path / "work")


def test_disk_full_during_a_save(tmp_path, compile_cache):
    work = tmp_path / "work"
    work.mkdir()
    # Metrics are written once, at the end: until then only checkpoints grow files (the log
    # goes through a pipe).
    run = long_run(work, compile_cache, "--config.train.log_every_steps=400", pipe=True,
                   log_name="../run.log")
    run.wait_for(lambda: len(harness.saved_steps(work)) >= 2)
    # The tiny model's checkpoint files reach ~22 KB (tree metadata) and ~30 KB (arrays).
    harness.limit_file_size(run.process.pid, 16 * 1024)
    check_aftermath(run, work, "File too large")
