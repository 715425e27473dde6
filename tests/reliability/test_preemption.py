"""SIGTERM: during training, during a stage change and during start-up the run saves the
step it reached and exits cleanly; the next start loses no step and ends bitwise equal. With 2
processes, SIGTERM to one makes both save at the same step."""

import os
import re
import signal

import pytest

import harness
from conftest import tiny_config
from effnetv2_jax import data
from effnetv2_jax.train import loop
from effnetv2_jax.train.reporting import Reporter

pytestmark = pytest.mark.slow  # SIGTERM to real runs, one of two processes


def sigterm_self():
    os.kill(os.getpid(), signal.SIGTERM)


def finish_and_compare(tmp_path, compile_cache, reference, caplog, expect_resume,
                       expect_compiled_stages):
    caplog.clear()
    loop.train_and_evaluate(tiny_config(compile_cache), str(tmp_path))
    resumed = [r.getMessage() for r in caplog.records if "resumed from step" in r.getMessage()]
    assert resumed and resumed[0].startswith(f"resumed from step {expect_resume} "), resumed
    # The restart compiled from the traces stored by earlier runs (train/exported_steps.py)
    # and still ends bitwise equal to the uninterrupted run.
    compiles = [m for m in (r.getMessage() for r in caplog.records)
                if m.startswith(("stage ", "eval step")) and " compiled in " in m]
    assert compiles and all("(stored trace)" in m for m in compiles), compiles
    # Only the stages still to run were loaded (a finished stage's step never is).
    stages = {int(m.split()[1]) for m in compiles if m.startswith("stage ")}
    assert stages == expect_compiled_stages, compiles
    # ... and the later ones when their stage began, not before the first step.
    deferred = {int(m.split()[1]) for m in (r.getMessage() for r in caplog.records)
                if m.startswith("stage ") and "loading it when first needed" in m}
    assert deferred == expect_compiled_stages - {min(expect_compiled_stages)}, deferred
    assert harness.mismatching_arrays(reference[1], harness.final_state(tmp_path)) == []


def test_sigterm_during_training_saves_that_step(reference, tmp_path, monkeypatch, caplog,
                                                 compile_cache):
    original = Reporter.step_done

    def preempt_at_two(self, step, metrics, image_size):
        original(self, step, metrics, image_size)
        if step == 2:
            sigterm_self()

    monkeypatch.setattr(Reporter, "step_done", preempt_at_two)
    caplog.set_level("INFO")
    loop.train_and_evaluate(tiny_config(compile_cache), str(tmp_path))
    assert harness.saved_steps(tmp_path) == [2], "SIGTERM saves at the step it arrived, stops"
    monkeypatch.setattr(Reporter, "step_done", original)
    finish_and_compare(tmp_path, compile_cache, reference, caplog, expect_resume=2,
                       expect_compiled_stages={0, 1})


def test_sigterm_during_a_stage_change_saves_the_step_it_finishes(reference, tmp_path,
                                                                  monkeypatch, caplog,
                                                                  compile_cache):
    original = data.make_train_iterator

    def preempt_while_building_stage_one(*args, start_step, **kwargs):
        if start_step == 3:          # stage 1 starts at step 3 of 6
            sigterm_self()
        return original(*args, start_step=start_step, **kwargs)

    monkeypatch.setattr(data, "make_train_iterator", preempt_while_building_stage_one)
    caplog.set_level("INFO")
    loop.train_and_evaluate(tiny_config(compile_cache), str(tmp_path))
    # Step 3 was saved with its evaluation; the signal lands while stage 1's input pipeline
    # is built, so step 4 (the step in flight) is finished and saved, nothing later.
    assert harness.saved_steps(tmp_path)[-1] == 4
    assert any("preempted: saved step 4" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(data, "make_train_iterator", original)
    finish_and_compare(tmp_path, compile_cache, reference, caplog, expect_resume=4,
                       expect_compiled_stages={1})


def test_sigterm_during_start_up_exits_cleanly_before_the_first_step(reference, tmp_path,
                                                                      monkeypatch, caplog,
                                                                      compile_cache):
    original = loop.compile_train_steps

    def preempt_while_compiling(run, *args):
        sigterm_self()
        return original(run, *args)

    monkeypatch.setattr(loop, "compile_train_steps", preempt_while_compiling)
    caplog.set_level("INFO")
    assert loop.train_and_evaluate(tiny_config(compile_cache), str(tmp_path)) == {}
    assert harness.saved_steps(tmp_path) == []
    assert any("preempted during start-up" in r.getMessage() for r in caplog.records)


def test_sigterm_exits_zero_from_the_command_line(tmp_path, compile_cache):
    run = harness.launch(tmp_path, compile_cache, "--config.train.num_steps=400",
                         "--config.train.log_every_steps=1")
    run.wait_for(lambda: harness.saved_steps(tmp_path))
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()[-3000:]
    saved = int(re.findall(r"preempted: saved step (\d+)", run.log())[-1])
    assert harness.saved_steps(tmp_path)[-1] == saved
    assert max(harness.logged_steps(run.log())) == saved, "no finished step is lost"


def test_sigterm_to_one_of_two_processes_saves_both_at_the_same_step(tmp_path, compile_cache):
    runs = harness.launch_two_processes(tmp_path, compile_cache, 7,
                                        "--config.train.num_steps=400")
    runs[0].wait_for(lambda: (tmp_path / "checkpoints" / "4").exists(), timeout=400)
    runs[1].signal(signal.SIGTERM)           # only one host is preempted
    saved = harness.preempted_steps(runs)
    assert saved[0] == saved[1] < 400
    assert (tmp_path / "checkpoints" / str(saved[0]) / "state").is_dir()
