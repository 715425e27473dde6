"""The TPU path, compiled here for real TPU topologies by libtpu (no TPU needed): every stage
of the shrunken test network compiles for v5e 2x2, v4 2x2x1 (megacore) and two v5e slices,
splits its batch over the chips, fits, and holds no XLA:CPU kernel."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from config_parsing import parse_command_line

from effnetv2_jax import cpu
from effnetv2_jax.train import aot, compiled_steps, exported_steps, sharding, topology
from effnetv2_jax.train.run import plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
needs_libtpu = pytest.mark.skipif(
    not topology.libtpu_installed(),
    reason="libtpu is not installed (the `tpu` extra, Linux x86_64 only)")


def tiny_config(global_batch: int = 8):
    config = tiny.get_config()
    config.train.global_batch_size = config.eval.global_batch_size = global_batch
    return config


@pytest.mark.parametrize("name, topology_name, chips, host, gcloud", [
    ("v4-8", "v4:2x2x1", 4, (2, 2, 1), "v4-8"),
    ("v4-32", "v4:2x2x4", 16, (2, 2, 1), "v4-32"),
    ("v5litepod-16", "v5e:4x4", 16, (2, 2, 1), "v5litepod-16"),
    ("v5e-8", "v5e:2x4", 8, (2, 4, 1), "v5litepod-8"),
    ("v5p-64", "v5:2x4x4", 32, (2, 2, 1), "v5p-64"),
    ("v6e-8", "v6e:2x4", 8, (2, 4, 1), "v6e-8"),
    ("v3-8", "v3:2x2", 4, (2, 2, 1), "v3-8"),
    ("v5e:2x2", "v5e:2x2", 4, (2, 2, 1), "v5litepod-4"),
    ("v5p:2x2x1", "v5:2x2x1", 4, (2, 2, 1), "v5p-8"),
])
def test_accelerator_names_map_to_libtpu_topologies(name, topology_name, chips, host, gcloud):
    accelerator = topology.parse(name)
    assert (accelerator.topology, accelerator.chips, accelerator.chips_per_host_bounds,
            accelerator.gcloud_name) == (topology_name, chips, host, gcloud)


@pytest.mark.parametrize("name, message", [
    ("v4-6", "no standard v4 slice is called 'v4-6'.*v4-8"),
    ("v7x-8", "unknown TPU generation 'v7x'"),
    ("v4:2x2", "v4 is a 3D torus"),
    ("tpu", "cannot read the accelerator 'tpu'"),
])
def test_bad_accelerator_names_say_what_is_valid(name, message):
    with pytest.raises(ValueError, match=message):
        topology.parse(name)


def test_chip_figures_are_per_jax_device():
    v3, v4 = topology.GENERATIONS["v3"], topology.GENERATIONS["v4"]
    assert v3.hbm_bytes == 16 * 2**30 and v4.hbm_bytes == 32 * 2**30  # v3: a core, half a chip
    assert topology.memory_of_kind("TPU v5 lite") == 16 * 2**30
    assert topology.memory_of_kind("cpu") is None


@needs_libtpu
def test_conv_impl_follows_the_target_devices_not_the_host():
    devices = topology.devices(topology.parse("v5e:2x2"))
    assert jax.default_backend() == "cpu"
    assert plan(tiny_config(), devices).model_kwargs["conv_impl"] == "xla"
    assert plan(tiny_config()).model_kwargs["conv_impl"] == "cpu"  # this host's CPU devices
    forced = tiny_config()
    forced.model.conv_impl = "cpu"
    with pytest.raises(ValueError, match="conv impl 'cpu' runs only on CPU devices.*tpu"):
        plan(forced, devices)


@needs_libtpu
def test_a_stored_step_is_exported_for_the_target_platform(tmp_path):
    run = plan(tiny_config(), topology.devices(topology.parse("v5e:2x2")))
    run.compile_cache_dir = str(tmp_path)
    spec = compiled_steps.eval_step_spec(run)
    compiled_steps.compile_spec(run, spec)
    (stored,) = (tmp_path / "exported").iterdir()
    exported = exported_steps._load(exported_steps.epath.Path(stored),  # noqa: SLF001
                                    jax.tree.structure(spec.args))[0]
    assert exported is not None and exported.platforms == ("tpu",)
    text = exported.mlir_module()
    assert not [t for t in cpu.kernel_targets() if t in text]
    # Loaded again (a restart), it compiles from the file for the TPU.
    _, from_file = exported_steps.compile_step(
        spec.step_fn, spec.args, name=spec.name, description=spec.description,
        out_sharding=sharding.replicated(run.mesh), donate_first=False,
        cache_dir=run.compile_cache_dir)
    assert from_file


@needs_libtpu
@pytest.mark.parametrize("accelerator, slices, per_device", [
    ("v5e:2x2", 1, 2),
    pytest.param("v4:2x2x1", 1, 2, marks=pytest.mark.slow),
    pytest.param("v5e:2x2", 2, 2, marks=pytest.mark.slow)])
def test_every_stage_compiles_for_tpu_and_fits(accelerator, slices, per_device):
    devices = topology.devices(topology.parse(accelerator), slices)
    config = tiny_config(global_batch=per_device * len(devices))
    report = aot.compile_run(config, accelerator, slices)
    assert report.ok, aot.format_report(report)
    assert [s.step for s in report.steps] == ["stage 0", "stage 1", "eval"]
    assert report.platform == "tpu" and report.devices == len(devices) == 4 * slices
    for step in report.steps:
        assert step.batch_per_device == per_device
        assert 0 < step.total_bytes < step.device_memory_bytes
        assert step.flops > 0 and step.bytes_accessed > 0 and step.roofline_s > 0
        assert set(step.custom_calls) <= aot.TPU_NATIVE_CUSTOM_CALLS
        assert not set(step.custom_calls) & set(cpu.kernel_targets())
        # Gradients (train) and metric sums (eval) are reduced over the data axis.
        assert step.collectives.get("all-reduce", 0) >= (1 if step.step == "eval" else 10)


@needs_libtpu
def test_the_batch_is_split_over_the_data_axis_in_the_tpu_program():
    run = plan(tiny_config(global_batch=8), topology.devices(topology.parse("v4:2x2x1")))
    spec = compiled_steps.train_step_specs(run)[0]  # 32 px
    text = compiled_steps.compile_spec(run, spec).as_text()
    entry = text[text.index("ENTRY"):]
    # 2 of the 8 images per chip: the program's parameters are per-device shards.
    assert "f32[2,32,32,3]" in entry and "f32[8,32,32,3]" not in entry


@needs_libtpu
def test_two_slices_make_a_slice_major_mesh():
    devices = topology.devices(topology.parse("v5e:2x2"), slices=2)
    mesh = sharding.make_mesh(devices)
    assert [d.slice_index for d in mesh.devices.flat] == [0] * 4 + [1] * 4
    assert sharding.num_slices(devices) == 2 and sharding.process_count(mesh) == 2
    # BN groups of one slice's 4 devices: each group's statistics stay inside a slice.
    assert sharding.bn_groups("groups", mesh.size, group_size=4, slices=2) == 2
    with pytest.raises(ValueError, match="no BN group spans two slices"):
        sharding.bn_groups("groups", mesh.size, group_size=8, slices=2)


def test_unprepared_recipe_datasets_use_their_known_sizes(tmp_path):
    config = parse_command_line(f"--config={ROOT / 'configs' / 's_imagenet.py'}")
    config.data.data_dir = str(tmp_path)  # nothing prepared there
    info = aot.dataset_info(config)
    assert (info.num_classes, info.num_train_examples, info.multi_label) == (1000, 1_281_167,
                                                                             False)
    config.data.name = "my_dataset"
    with pytest.raises(ValueError, match="--config.model.num_classes=N"):
        aot.dataset_info(config)
    config.model.num_classes = 37
    assert aot.dataset_info(config).num_classes == 37


@needs_libtpu
@pytest.mark.slow
def test_compile_mode_names_the_stage_that_does_not_fit(tmp_path):
    """A 1M-class head (4 GiB of float32 weights, five copies with the optimizer and EMA
    state) cannot train on a 16 GiB v5e chip: the command exits non-zero naming the stage and
    the fixes, after writing the report."""
    env = {**os.environ, "EFFNETV2_JAX_ALLOCATOR": "system"}
    done = subprocess.run(
        [sys.executable, "-m", "effnetv2_jax.main", "--config=tests/configs/tiny.py",
         f"--workdir={tmp_path}", "--mode=compile", "--topology=v5litepod-4",
         "--config.model.feature_size=1024", "--config.data.synthetic_num_classes=1000000"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, done.stdout + done.stderr
    assert re.search(r"FAILED stage 0 \(32 px, 2 per chip\) does not fit: .*model\.remat=True",
                     done.stderr), done.stderr[-3000:]
    assert "FAILED stage 1 (40 px" in done.stderr
    assert "stage 0" in done.stdout and "v5litepod-4" in done.stdout  # the table
    report = json.loads((tmp_path / "compile_v5litepod-4.json").read_text())
    assert [s["fits"] for s in report["steps"]][:2] == [False, False]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("remat, dtype, named, not_named", [
    (False, "float32", ["global_batch_size", "model.remat=True", "model.dtype=bfloat16"],
     ["more chips"]),
    (False, "bfloat16", ["global_batch_size", "model.remat=True"],
     ["model.dtype=bfloat16", "more chips"]),
    (True, "bfloat16", ["global_batch_size", "more chips"],
     ["model.remat=True", "model.dtype=bfloat16"]),
])
def test_fit_advice_names_only_what_the_config_does_not_already_do(remat, dtype, named,
                                                                   not_named):
    advice = compiled_steps.fit_advice(remat, dtype)
    assert all(n in advice for n in named) and not any(n in advice for n in not_named), advice
