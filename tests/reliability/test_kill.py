"""Kill anywhere: SIGKILL inside a compilation, an asynchronous checkpoint write and an
evaluation; the same command restarted finishes with bitwise the uninterrupted parameters."""

import pytest

import harness

pytestmark = pytest.mark.slow  # SIGKILL at kill points of real training runs: minutes


@pytest.mark.parametrize("killpoint, resumes_from", [
    ("compile:2", {None}),      # before any checkpoint: the restart starts afresh, correctly
    ("checkpoint:4", {3}),      # step 4 half written: 3 is the newest complete step
    # The first evaluation (after step 3, before its save); step 2's asynchronous write may
    # or may not have been committed by then.
    ("eval:1", {2, None}),
])
def test_sigkill_then_restart_gives_identical_parameters(killpoint, resumes_from, reference,
                                                         tmp_path, compile_cache):
    killed = harness.launch(tmp_path, compile_cache, killpoint=killpoint)
    assert killed.wait() == -9, killed.log()[-3000:]
    assert "killpoint: SIGKILL inside" in killed.log()
    assert all(s < harness.TINY_STEPS for s in harness.saved_steps(tmp_path))
    code, log = harness.run_until_done(tmp_path, compile_cache)
    assert code == 0, log[-3000:]
    assert harness.resumed_step(log) in resumes_from
    assert harness.mismatching_arrays(reference[1], harness.final_state(tmp_path)) == []
