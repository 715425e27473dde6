"""Damaged checkpoints: each damage to the newest step makes the restore fall back to the newest
intact step, naming the step it skipped and why; another model is refused naming the first
mismatching array; no combination starts training from scratch silently."""

import logging
import shutil

import jax
import orbax.checkpoint as ocp
import pytest

import harness
from conftest import tiny_config
from effnetv2_jax.train import run as run_setup
from effnetv2_jax.train import sharding
from effnetv2_jax.train.checkpoint import Checkpointer, CheckpointError, abstract_like

pytestmark = pytest.mark.slow  # trains, then damages and restores each checkpoint part


@pytest.fixture(scope="module")
def target(reference, tmp_path_factory, compile_cache):
    """The restore target (abstract train state on the mesh) of the tiny model."""
    run = run_setup.setup(tiny_config(compile_cache), str(tmp_path_factory.mktemp("fresh")))
    run.checkpointer.close()
    return abstract_like(run.state, sharding.replicated(run.mesh))


def copy_checkpoints(reference, tmp_path):
    shutil.copytree(reference[0] / "checkpoints", tmp_path / "checkpoints")
    return tmp_path / "checkpoints"


@pytest.mark.parametrize("damage", sorted(harness.DAMAGES))
def test_a_damaged_newest_step_falls_back_or_restores_exactly(damage, reference, target,
                                                              tmp_path, caplog):
    directory = copy_checkpoints(reference, tmp_path)
    newest = harness.saved_steps(tmp_path)[-1]
    harness.damage(directory / str(newest), damage)
    caplog.set_level(logging.WARNING)
    checkpointer = Checkpointer(str(directory))
    state, _, step = checkpointer.restore(target)
    checkpointer.close()
    if step == newest:
        # Only files that restoring does not need were hit: the arrays must be exactly right.
        assert harness.mismatching_arrays(reference[1], harness.final_state(tmp_path)) == []
        assert int(jax.device_get(state.step)) == newest
    else:
        assert step == harness.saved_steps(tmp_path)[-2]
        skipped = [r.getMessage() for r in caplog.records if "skipping it" in r.getMessage()]
        assert skipped and f"checkpoint step {newest} " in skipped[0], skipped
        assert "(" in skipped[0] and skipped[0].rstrip().endswith(")")  # the reason


def test_a_wrong_value_that_storage_cannot_detect_is_caught_by_the_checksums(
        reference, target, tmp_path, caplog):
    """Some single-byte flips inside OCDBT data files restore silently as other values
    (benchmarks/faults.py counts them); here one array value is changed and written back as
    valid Orbax data, which only the checksums saved in the metadata can catch."""
    directory = copy_checkpoints(reference, tmp_path)
    newest = harness.saved_steps(tmp_path)[-1]
    tree = harness.final_state(tmp_path, newest)
    tree["params"]["stem_conv"]["kernel"][0, 0, 0, 0] += 1.0
    shutil.rmtree(directory / str(newest) / "state")
    with ocp.StandardCheckpointer() as writer:
        writer.save(directory / str(newest) / "state", tree)
    caplog.set_level(logging.WARNING)
    checkpointer = Checkpointer(str(directory))
    _, _, step = checkpointer.restore(target)
    checkpointer.close()
    assert step == harness.saved_steps(tmp_path)[-2]
    assert any("array 'params/stem_conv/kernel' (1 in all) does not match the checksum"
               in r.getMessage() for r in caplog.records)


def test_every_step_damaged_refuses_to_start_from_scratch(reference, tmp_path, compile_cache):
    directory = copy_checkpoints(reference, tmp_path)
    for step in harness.saved_steps(tmp_path):
        harness.damage(directory / str(step), "truncate array data")
    with pytest.raises(CheckpointError, match="refusing to start from scratch") as error:
        run_setup.setup(tiny_config(compile_cache), str(tmp_path))
    for step in harness.saved_steps(tmp_path):
        assert f"step {step}:" in str(error.value)


@pytest.mark.parametrize("blocks, array", [
    (("r1_k3_s1_e1_i8_o8_c1", "r1_k3_s2_e4_i8_o24_se0.25"), "blocks/1/project_bn/bias' is (16,)"),
    (("r1_k3_s1_e1_i8_o8_c1", "r2_k3_s2_e4_i8_o16_se0.25"), "blocks/2/"),
])
def test_another_model_is_refused_naming_the_first_mismatching_array(blocks, array, reference,
                                                                     tmp_path, compile_cache):
    copy_checkpoints(reference, tmp_path)
    config = tiny_config(compile_cache)
    config.model.block_strings = blocks
    with pytest.raises(CheckpointError, match="refusing to start from scratch") as error:
        run_setup.setup(config, str(tmp_path))
    message = str(error.value)
    assert "a different model or shape: array '" in message and array in message, message
