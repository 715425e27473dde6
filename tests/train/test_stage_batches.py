"""Per-stage global batch (`progressive.global_batch_sizes`) on the tiny network: where the
stages fall (steps follow each stage's batch when the length is in epochs), the examples seen
before a step (the input stream's position), the learning rate (base_lr x batch / 256 per
stage, warmup and decay in epochs of examples), validation naming the stage, each stage
compiled at its own batch (also for a TPU slice in compile mode), and an interrupted run that
resumes bitwise equal to an uninterrupted one."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from effnetv2_jax.train import aot, config as train_config, hardware, progressive, topology
from effnetv2_jax.train.compiled_steps import train_step_specs
from effnetv2_jax.train.optim import learning_rate_schedule
from effnetv2_jax.train.run import plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
import tiny  # noqa: E402

SCHEDULE = progressive.Schedule((32, 40), (0, 0), (0, 0), (0, 0), (0, 0))


def tiny_config(*batches, num_steps=6):
    config = tiny.get_config()
    config.progressive.global_batch_sizes = batches
    config.train.num_steps = num_steps
    return config


def test_stages_record_their_batch_and_the_examples_before_them():
    stages = progressive.make_stages(SCHEDULE, 2, 6, batch_sizes=(8, 4))
    assert [(s.start_step, s.end_step, s.batch_size, s.start_example) for s in stages] == [
        (0, 3, 8, 0), (3, 6, 4, 24)]
    assert [progressive.examples_before(stages, step) for step in range(7)] == [
        0, 8, 16, 24, 28, 32, 36]


def test_in_epochs_each_stage_trains_its_share_of_examples_at_its_batch():
    # V2-S's 350 epochs of 1,256,144 images in 4 stages, the last two at half the batch:
    # the first two stages as with one batch (26,834 steps each), the last two twice as many.
    ends = progressive.epoch_ends(350, 1_256_144, (4096, 4096, 2048, 2048))
    assert ends == [26_834, 53_668, 107_336, 161_005]
    stages = progressive.make_stages(SCHEDULE, 4, ends[-1], batch_sizes=(4096, 4096, 2048, 2048),
                                     ends=ends)
    total = progressive.examples_before(stages, ends[-1])
    assert abs(total - 350 * 1_256_144) < 3 * 4096  # every stage rounds down by < 1 batch
    # One batch: the same end steps as the equal split of int(350 * N / 4096) steps.
    same = progressive.make_stages(SCHEDULE, 4, 107_336)
    assert progressive.epoch_ends(350, 1_256_144, (4096,) * 4) == [s.end_step for s in same]


def test_run_plan_with_stage_batches_in_epochs_and_in_steps():
    config = tiny_config(8, 4, num_steps=0)
    config.train.num_epochs = 1.5  # 64 examples: 48 per stage -> 6 steps of 8, 12 of 4
    run = plan(config)
    assert [(s.start_step, s.end_step, s.batch_size) for s in run.stages] == [
        (0, 6, 8), (6, 18, 4)]
    assert run.total_steps == 18
    run = plan(tiny_config(8, 4))  # num_steps=6: 3 steps per stage, whatever the batch
    assert [(s.start_step, s.end_step, s.batch_size) for s in run.stages] == [
        (0, 3, 8), (3, 6, 4)]
    # () and the same batch for every stage plan the same run.
    same, default = plan(tiny_config(8, 8)), plan(tiny_config())
    assert same.stages == default.stages and same.total_steps == default.total_steps


def test_learning_rate_scales_with_each_stage_batch_and_keeps_epochs():
    kwargs = dict(base_lr=0.016, steps_per_epoch=10.0, schedule="exponential",
                  warmup_epochs=1.0, decay_epochs=2.0, decay_factor=0.5)
    reference = learning_rate_schedule(global_batch_size=256, total_steps=60, **kwargs)
    stages = progressive.make_stages(SCHEDULE, 2, 60, batch_sizes=(256, 128), ends=(20, 60))
    staged = learning_rate_schedule(global_batch_size=256, total_steps=60, stages=stages, **kwargs)
    for step in (0, 5, 10, 19):  # stage 0 runs at the reference batch: the same schedule
        assert float(staged(step)) == pytest.approx(float(reference(step)))
    # Stage 1, half the batch: half the lr at the same epoch. Step 20 + 2k has seen the
    # examples of reference step 20 + k.
    for k in (0, 3, 10, 19):
        assert float(staged(20 + 2 * k)) == pytest.approx(0.5 * float(reference(20 + k)))
    # The official rule at the peak: 0.016 x 128 / 256 during stage 1 before any decay.
    flat = learning_rate_schedule(global_batch_size=256, total_steps=60, stages=stages,
                                  **{**kwargs, "schedule": "constant"})
    assert float(flat(30)) == pytest.approx(0.016 * 128 / 256)
    # Cosine ends at the run's last example, not at step 60 of the reference batch.
    cosine = learning_rate_schedule(global_batch_size=256, total_steps=60, stages=stages,
                                    **{**kwargs, "schedule": "cosine", "warmup_epochs": 0})
    assert float(cosine(59)) < 1e-3 * 0.016 and float(cosine(40)) > 0.01 * 0.016


@pytest.mark.parametrize("batches, message", [
    ((8,), r"global_batch_sizes=\(8,\) gives 1 batches for 2 stages"),
    ((8, 0), r"global_batch_sizes\[1\]=0 \(stage 1's global batch\) must be a positive"),
])
def test_bad_stage_batches_are_refused_naming_the_key(batches, message):
    with pytest.raises(ValueError, match=message):
        train_config.validate(tiny_config(*batches))


def test_a_stage_batch_that_does_not_divide_over_the_devices_names_the_stage():
    assert jax.device_count() == 4
    with pytest.raises(ValueError, match=r"stage 1's batch progressive.global_batch_sizes\[1\]"
                                         r"=6 does not divide over 4 devices"):
        plan(tiny_config(8, 6))


def test_hardware_preset_caps_every_stage_batch():
    config = tiny_config(4096, 2048)
    config.train.global_batch_size = 4096
    hardware.apply(config, "tpu_v4_8")  # cap 1024
    assert tuple(config.progressive.global_batch_sizes) == (1024, 1024)
    assert config.train.global_batch_size == 1024


def test_each_stage_is_compiled_at_its_own_batch():
    run = plan(tiny_config(8, 4))
    specs = train_step_specs(run)
    assert [(s.stage, s.batch, s.name) for s in specs] == [
        (0, 8, "train_32px"), (1, 4, "train_40px_4b")]
    assert specs[1].args[1]["image"].shape == (4, 40, 40, 3)
    assert "batch 4" in specs[1].what


@pytest.mark.skipif(not topology.libtpu_installed(), reason="libtpu is not installed")
def test_compile_mode_shows_each_stage_per_chip_batch():
    config = tiny_config(8, 4)
    config.eval.global_batch_size = 8
    report = aot.compile_run(config, "v5e:2x2")
    assert report.ok, aot.format_report(report)
    assert [(s.step, s.batch_per_device) for s in report.steps] == [
        ("stage 0", 2), ("stage 1", 1), ("eval", 2)]
    rows = aot.format_report(report).splitlines()
    assert rows[2].split()[:4] == ["stage", "0", "32", "2"]
    assert rows[3].split()[:4] == ["stage", "1", "40", "1"]


@pytest.mark.slow
def test_interrupted_run_with_stage_batches_resumes_bitwise(tmp_path, monkeypatch):
    """SIGTERM after step 4 (in stage 1, batch 4), restart: the final state equals an
    uninterrupted run's, bit for bit (the stream resumed at example 3 x 8 + 1 x 4 = 28)."""
    import os
    import signal

    from effnetv2_jax import data
    from effnetv2_jax.train import loop
    from effnetv2_jax.train.checkpoint import read_state
    from effnetv2_jax.train.reporting import Reporter

    def final(workdir):
        return jax.tree.map(np.asarray, read_state(str(workdir / "checkpoints" / "6")))

    config = tiny_config(8, 4)
    config.checkpoint.compile_cache_dir = str(tmp_path / "cache")
    loop.train_and_evaluate(config, str(tmp_path / "straight"))

    original, starts = Reporter.step_done, []

    def preempt_at_four(self, step, metrics, image_size):
        original(self, step, metrics, image_size)
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    make = data.make_train_iterator

    def recording(*args, **kwargs):
        starts.append((kwargs["start_step"], kwargs["start_example"],
                       kwargs["global_batch_size"]))
        return make(*args, **kwargs)

    monkeypatch.setattr(data, "make_train_iterator", recording)
    monkeypatch.setattr(Reporter, "step_done", preempt_at_four)
    loop.train_and_evaluate(config, str(tmp_path / "resumed"))
    monkeypatch.setattr(Reporter, "step_done", original)
    loop.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert starts == [(0, 0, 8), (3, 24, 4), (4, 28, 4)]
    a, b = final(tmp_path / "straight"), final(tmp_path / "resumed")
    assert all(x.tobytes() == y.tobytes() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
