"""Compile mode: every step of a training run compiled ahead of time for its target, with
memory, FLOPs, collectives and a roofline estimate per step, before anyone pays for a pod.

    python -m effnetv2_jax.main --config=configs/s_imagenet.py --workdir=DIR \
        --mode=compile --topology=v5p-64 [--slices=2]

The target is a TPU slice described by libtpu on whatever machine this runs on (no TPU, no
data, no parameters: abstract shapes only, as MaxText's `train_compile.py` does), or, without
`--topology`, this job's own devices. The run is planned exactly as training plans it
(`run.plan`: mesh, shardings, model, optimizer state, progressive stages), and each distinct
train step and the eval step are lowered and compiled by the target's real compiler. The table
and `compile_<target>.json` in the workdir give, per step and per device: memory (arguments,
temporaries, total) against the device's HBM, XLA's FLOP and byte counts, the collectives in
the program, and a roofline lower bound on the step time, max(FLOPs / peak, bytes / HBM
bandwidth), with the images/s per device it implies: an estimate from the chip table
(`topology.py`), not a measurement. A step that does not fit, or a custom call in a TPU
program that is not TPU-native (an XLA:CPU kernel would be), fails the check.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time

import jax
import ml_collections
from absl import logging
from etils import epath

from effnetv2_jax import cpu, data
from effnetv2_jax.train import inputs, topology
from effnetv2_jax.train.compiled_steps import (StepSpec, compile_spec, device_memory,
                                               eval_step_spec, fit_advice, memory_needed,
                                               train_step_specs)
from effnetv2_jax.train.run import Run, plan

# Custom calls libtpu itself puts in TPU programs (seen in this project's compiled steps);
# anything else in a TPU program is reported, the project's XLA:CPU kernels above all.
TPU_NATIVE_CUSTOM_CALLS = frozenset({
    "ConcatBitcast", "TopK",  # libtpu's concatenation, lax.top_k (eval's top-5)
    "SliceId", "ZeroCrop",    # multi-slice programs
    "AllocateBuffer", "Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"})
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")

# Split sizes of the recipes' datasets (TFDS, and the official code's ImageNet-21k), used when
# the dataset is not prepared on the compiling machine. Only the class count and the label
# kind change a program's shapes; the sizes set the stage boundaries and the schedule.
# name: (classes, train examples, eval examples, multi-label)
KNOWN_DATASETS = {
    "imagenet2012": (1000, 1_281_167, 50_000, False),
    "imagenet21k": (21_843, 12_720_275, 100_357, True),  # google/automl efficientnetv2/datasets.py
    "cifar10": (10, 50_000, 10_000, False),
    "cifar100": (100, 50_000, 10_000, False),
    "oxford_flowers102": (102, 2_040, 6_149, False),      # train+validation / test
    "cars196": (196, 8_144, 8_041, False),
}


class CompileCheckError(RuntimeError):
    """A step does not fit its target, or its program holds a non-native custom call."""


@dataclasses.dataclass
class StepReport:
    """One compiled step, figures per device (a chip; a TensorCore on v2/v3).

    Memory in bytes; flops and bytes_accessed are XLA's counts for one step; roofline_s is
    the lower bound max(flops / peak, bytes_accessed / bandwidth), seconds, an estimate.
    """

    step: str
    image_size: int
    batch_per_device: int
    compile_s: float = 0.0
    argument_bytes: int = 0
    temp_bytes: int = 0
    total_bytes: int = 0
    device_memory_bytes: float | None = None
    fits: bool = True
    fit_note: str = ""
    flops: float = 0.0
    bytes_accessed: float = 0.0
    collectives: dict[str, int] = dataclasses.field(default_factory=dict)
    custom_calls: list[str] = dataclasses.field(default_factory=list)
    roofline_s: float | None = None
    images_per_s_per_device: float | None = None
    error: str = ""


@dataclasses.dataclass
class Report:
    target: str
    devices: int
    slices: int
    device_kind: str
    platform: str
    model: str
    dtype: str
    remat: bool
    conv_impl: str
    steps: list[StepReport]
    chip_source: str = ""

    @property
    def ok(self) -> bool:
        return all(s.fits and not s.error for s in self.steps)


def dataset_info(config: ml_collections.ConfigDict) -> data.DatasetInfo:
    """The dataset's metadata: read if the data is there; else the recipe datasets' known
    sizes; else, with `model.num_classes` set, nominal sizes (shapes need only the classes)."""
    try:
        return data.dataset_info(inputs.data_config(config))
    except Exception as error:  # noqa: BLE001 - not prepared here: fall back, below
        reason = f"{type(error).__name__}: {str(error).split('. ')[0]}"  # its first sentence
    name = config.data.name if config.data.source == "tfds" else ""
    if name in KNOWN_DATASETS:
        classes, train, evals, multi = KNOWN_DATASETS[name]
        logging.info("dataset %s not readable here (%s); using its known sizes", name, reason)
    elif config.model.num_classes:
        classes, train, evals, multi = config.model.num_classes, 1_000_000, 50_000, False
        logging.warning("dataset not readable here (%s); compiling for model.num_classes=%d "
                        "with nominal sizes (stage boundaries are then approximate)", reason,
                        classes)
    else:
        raise ValueError(f"cannot read the dataset's metadata here ({reason}) and "
                         f"{name or config.data.source!r} is not a known dataset: set "
                         f"--config.model.num_classes=N (and config.data.label_key for "
                         f"multi-label data) to compile without it")
    return data.DatasetInfo(classes, train, evals, tuple(str(i) for i in range(classes)), multi)


def target_devices(accelerator: str | None, slices: int = 1) -> tuple[list, str]:
    """(devices, target name): a TPU slice's descriptions, or this job's devices."""
    if not accelerator:
        if slices != 1:
            raise ValueError("--slices needs --topology (this job's devices are one slice)")
        devices = jax.devices()
        return devices, f"{len(devices)}x {devices[0].device_kind}"
    parsed = topology.parse(accelerator)
    name = parsed.gcloud_name + (f" x{slices} slices" if slices > 1 else "")
    return topology.devices(parsed, slices), name


STAGES = ("all", "last")


def compile_run(config: ml_collections.ConfigDict, accelerator: str | None = None,
                slices: int = 1, stages: str = "all") -> Report:
    """Plans `config` for the target and compiles its steps: every stage's train step and the
    eval step (`stages="all"`), or only the last stage's train step, the largest ("last").
    Never raises for a step that does not fit (its report says so), only for a config that
    cannot be planned."""
    if stages not in STAGES:
        raise ValueError(f"stages={stages!r} (valid: {', '.join(STAGES)})")
    devices, target = target_devices(accelerator, slices)
    run = plan(config, devices, info=dataset_info(config))
    kind = devices[0].device_kind
    generation = topology.generation_of_kind(kind)
    report = Report(target=target, devices=len(devices), slices=slices, device_kind=kind,
                    platform=devices[0].platform, model=config.model.name,
                    dtype=config.model.dtype, remat=bool(config.model.remat),
                    conv_impl=run.model_kwargs["conv_impl"], steps=[],
                    chip_source=generation.source if generation else "")
    specs = [*train_step_specs(run), eval_step_spec(run)]
    for spec in specs if stages == "all" else specs[-2:-1]:
        report.steps.append(_compile_step(run, spec, generation))
        logging.info("%s", _row(report.steps[-1]))
    return report


def _compile_step(run: Run, spec: StepSpec, generation) -> StepReport:
    devices = run.mesh.size
    result = StepReport(step=f"stage {spec.stage}" if spec.stage is not None else "eval",
                        image_size=spec.image_size, batch_per_device=spec.batch // devices,
                        device_memory_bytes=device_memory(run.mesh))
    start = time.perf_counter()
    try:
        compiled = compile_spec(run, spec, accept=lambda compiled: None)
    except Exception as error:  # noqa: BLE001 - a report row, not a crash
        result.compile_s = time.perf_counter() - start
        message = str(error)
        if "RESOURCE_EXHAUSTED" in message or "out of memory" in message.lower():
            result.fits = False
            # "... memory required for HLO temporaries (22.92G) exceeds available HBM (15.75G)"
            sizes = re.search(r"\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", message)
            result.fit_note = (f"the compiler needs {sizes[1]} GiB of temporaries, more than "
                               f"the {sizes[2]} GiB of HBM it can use" if sizes else
                               f"the compiler ran out of device memory ({message[:200]})")
        else:
            result.error = f"{type(error).__name__}: {message.splitlines()[0][:300]}"
        return result
    result.compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    if analysis is not None:
        result.argument_bytes = analysis.argument_size_in_bytes
        result.temp_bytes = analysis.temp_size_in_bytes
        result.total_bytes = memory_needed(analysis)
        limit = result.device_memory_bytes
        result.fits = not limit or result.total_bytes <= limit
        if not result.fits:
            result.fit_note = (f"needs {_gib(result.total_bytes)} GiB per device, the device "
                               f"has {_gib(limit)} GiB")
    cost = compiled.cost_analysis()
    result.flops = float(cost.get("flops", 0.0))
    result.bytes_accessed = float(cost.get("bytes accessed", 0.0))
    text = compiled.as_text()
    result.collectives = {
        op: n for op in COLLECTIVES
        if (n := len(re.findall(rf"\s{op}(?:-start)?\(", text)))}
    result.custom_calls = sorted(set(re.findall(r'custom_call_target="([^"]+)"', text)))
    if run.mesh.devices.flat[0].platform != "cpu":
        foreign = [c for c in result.custom_calls
                   if c in cpu.kernel_targets()
                   or (run.mesh.devices.flat[0].platform == "tpu"
                       and c not in TPU_NATIVE_CUSTOM_CALLS)]
        if foreign:
            result.error = (f"custom calls that are not native to "
                            f"{run.mesh.devices.flat[0].platform}: {', '.join(foreign)}")
    if generation is not None and (result.flops or result.bytes_accessed):
        result.roofline_s = max(result.flops / generation.peak_flops,
                                result.bytes_accessed / generation.hbm_bytes_per_s)
        if result.roofline_s > 0:
            result.images_per_s_per_device = result.batch_per_device / result.roofline_s
    return result


def _gib(value: float | None) -> str:
    return f"{value / 2**30:.2f}" if value else "-"


HEADER = (f"{'step':8} {'px':>4} {'batch':>5} {'compile s':>9} {'args GiB':>8} {'temp GiB':>8} "
          f"{'total GiB':>9} {'HBM GiB':>7} {'fits':>4} {'TFLOP':>7} {'GB moved':>8} "
          f"{'collectives':>11} {'est. ms':>7} {'est. img/s':>10}")


def _row(s: StepReport) -> str:
    collectives = sum(s.collectives.values())
    return (f"{s.step:8} {s.image_size:4d} {s.batch_per_device:5d} {s.compile_s:9.1f} "
            f"{_gib(s.argument_bytes):>8} {_gib(s.temp_bytes):>8} {_gib(s.total_bytes):>9} "
            f"{_gib(s.device_memory_bytes):>7} {'yes' if s.fits else 'NO':>4} "
            f"{s.flops / 1e12:7.3f} {s.bytes_accessed / 1e9:8.2f} {collectives:11d} "
            f"{s.roofline_s * 1e3 if s.roofline_s else float('nan'):7.1f} "
            f"{s.images_per_s_per_device or float('nan'):10.0f}")


def format_report(report: Report) -> str:
    """The report as a table, per device, with what failed and how to fix it."""
    unit = ("TensorCore" if report.device_kind in ("TPU v2", "TPU v3") else "chip"
            ) if report.platform == "tpu" else "device"
    lines = [f"{report.model} ({report.dtype}, remat={report.remat}, conv impl "
             f"{report.conv_impl}) on {report.target}: {report.devices} devices "
             f"({report.device_kind}); figures per {unit}",
             HEADER, *(_row(s) for s in report.steps),
             "est. ms / img/s: roofline lower bound max(FLOPs / peak, bytes / HBM bandwidth), "
             "an estimate" + (f" ({report.chip_source})" if report.chip_source else "")]
    for s in report.steps:
        if not s.fits:
            lines.append(f"FAILED {s.step} ({s.image_size} px, {s.batch_per_device} per {unit}) "
                         f"does not fit: {s.fit_note}; to fit: "
                         f"{fit_advice(report.remat, report.dtype)}")
        if s.error:
            lines.append(f"FAILED {s.step} ({s.image_size} px): {s.error}")
    return "\n".join(lines)


def compile_check(config: ml_collections.ConfigDict, workdir: str,
                  accelerator: str | None = None, slices: int = 1,
                  stages: str = "all") -> Report:
    """`compile_run`, printed as a table and written to `<workdir>/compile_<target>.json`;
    raises CompileCheckError naming each failed step after writing both."""
    report = compile_run(config, accelerator, slices, stages)
    text = format_report(report)
    print(text, flush=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", report.target)
    path = epath.Path(workdir) / f"compile_{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(report), indent=1))
    logging.info("wrote %s", path)
    if not report.ok:
        failed = [line for line in text.splitlines() if line.startswith("FAILED")]
        raise CompileCheckError("\n".join(failed))
    return report
