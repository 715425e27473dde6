"""Disk trouble during a save: a read-only workdir (permission bits, enforced even for root by
dropping its override capability), a file system that fills up (a small tmpfs mounted by the
test: ENOSPC, where mounting is permitted) and a per-process file-size limit (RLIMIT_FSIZE:
EFBIG, which needs no privilege). Each stops with a clear error naming the directory and the
fix; the steps saved before are intact and restore; no half-written step looks valid; after a
full disk, a restart with space resumes from the newest intact step and finishes."""

import errno
import re
import signal
import subprocess
import threading
import time

import pytest

import harness
from effnetv2_jax.train.checkpoint import Checkpointer

pytestmark = pytest.mark.slow  # real training runs whose disk fails mid-save


def check_aftermath(run, tmp_path, cause) -> list[int]:
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
    return steps


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


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs at tmp_path/disk (a tiny run needs about 2); skips where
    this process may not mount (not root, no CAP_SYS_ADMIN, a container without it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): "
                    f"{(mounted.stderr or mounted.stdout).strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk, stop: threading.Event) -> None:
    """Keeps the file system full (ENOSPC) until `stop`: a file takes every byte, also those
    the run frees by deleting its old steps."""
    with open(disk / "filler", "wb", buffering=0) as f:
        while not stop.is_set():
            try:
                f.write(b"\0" * 4096)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                time.sleep(0.02)


def test_file_system_fills_up_during_a_save_then_resumes_with_space(small_disk,
                                                                    compile_cache):
    work = small_disk / "work"
    overrides = ("--config.train.log_every_steps=400",)
    run = long_run(work, compile_cache, *overrides, log_name="../../run.log")
    run.wait_for(lambda: len(harness.saved_steps(work)) >= 2)
    stop = threading.Event()
    filler = threading.Thread(target=fill, args=(small_disk, stop))
    filler.start()
    try:
        intact = check_aftermath(run, work, "No space left on device")
    finally:
        stop.set()
        filler.join()
    log = run.log()
    message = re.findall(r"CheckpointSaveError: ([^\n]*)", log)[-1]
    assert str(work / "checkpoints") in message, message
    assert "Free space on the file system that holds it" in message, message
    # Space again: the same command resumes from the newest intact step and finishes.
    (small_disk / "filler").unlink()
    again = long_run(work, compile_cache, *overrides, log_name="../../run_again.log")
    assert again.wait() == 0, again.log()[-3000:]
    assert harness.resumed_step(again.log()) == intact[-1]
    assert harness.saved_steps(work)[-1] == 400
