"""Non-finite values: one NaN pixel in the batch of step s (put into the real input stream, so
it flows through the real forward, gradient, update and checks) stops training naming step s
with the last good checkpoint untouched; train.on_nonfinite=skip skips that step's update and
continues."""

import jax
import numpy as np
import pytest

import harness
from conftest import tiny_config
from effnetv2_jax import data
from effnetv2_jax.train import loop

pytestmark = pytest.mark.slow  # real training runs fed a NaN: minutes

NAN_STEP = 4  # the update from step 4 to 5, in stage 1; checkpoints 2, 3, 4 come before it


@pytest.fixture
def nan_pixel_at_step(monkeypatch):
    original = data.make_train_iterator

    def with_a_nan_pixel(*args, start_step, **kwargs):
        iterator = original(*args, start_step=start_step, **kwargs)

        def batches():
            for step, batch in enumerate(iterator, start=start_step):
                if step == NAN_STEP:
                    batch = {**batch, "image": batch["image"].copy()}
                    batch["image"][0, 0, 0, 0] = np.nan
                yield batch

        return _Closable(batches(), iterator)

    monkeypatch.setattr(data, "make_train_iterator", with_a_nan_pixel)


class _Closable:
    """The wrapped stream, closable as the loop closes a stage's iterator."""

    def __init__(self, stream, iterator):
        self.stream, self.iterator = stream, iterator

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.stream)

    def close(self):
        self.iterator.close()


def test_nan_at_step_s_stops_naming_s_and_keeps_the_last_good_checkpoint(
        nan_pixel_at_step, reference, tmp_path, compile_cache):
    with pytest.raises(FloatingPointError, match=f"non-finite at step {NAN_STEP};.*last good "
                                                 f"checkpoint is step 4"):
        loop.train_and_evaluate(tiny_config(compile_cache), str(tmp_path))
    assert harness.saved_steps(tmp_path) == [2, 3, 4]
    # The last good checkpoint is the uninterrupted run's step 4, bit for bit.
    assert harness.mismatching_arrays(harness.final_state(reference[0], 4),
                                      harness.final_state(tmp_path, 4)) == []


def test_skip_drops_the_bad_update_and_continues(nan_pixel_at_step, tmp_path, compile_cache,
                                                 caplog):
    config = tiny_config(compile_cache)
    config.train.on_nonfinite = "skip"
    caplog.set_level("WARNING")
    results = loop.train_and_evaluate(config, str(tmp_path))
    assert results["eval/examples"] == 20
    assert harness.saved_steps(tmp_path)[-1] == harness.TINY_STEPS
    assert any(f"non-finite at step {NAN_STEP}: its update was skipped" in r.getMessage()
               for r in caplog.records)
    state = harness.final_state(tmp_path)
    assert int(state["nonfinite_step"]) == NAN_STEP
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
