"""Peak device memory of the real train step, per progressive stage, for V2-S, M and L at their
recipe batch per chip: from XLA's `memory_analysis()` of the compiled step, no hardware needed.

For each recipe (configs/{s,m,l}_imagenet.py with the chosen hardware preset), the per-chip
batch is the preset's global batch / its chip count (CHIPS below), the compute dtype the
preset's, and the stages the recipe's progressive schedule. The project's own train step
(`train.step.make_train_step`: RMSProp with weight decay, EMA, label smoothing, skipped
non-finite updates; the state donated) is lowered on abstract per-chip inputs and compiled for
the CPU, nothing allocated. With `--remat` (default for L) each stage is compiled again with
`model.remat` (per-block recomputation) to show what it saves.

CPU memory analysis approximates TPU's: the buffer assignment is XLA's on both, but the CPU
backend lays out, fuses and (for bfloat16 convolutions) upcasts differently, so treat the
numbers as estimates within tens of percent; the loop's own `memory_analysis()` check on the
real device is the authority.

    python benchmarks/memory.py                         # S, M, L on tpu_v5e_32 (16 GiB chips)
    python benchmarks/memory.py --hw tpu_v4_32 --models s
    python benchmarks/memory.py --stages 0,3            # first and last stage only
    python benchmarks/memory.py --quick                 # smoke: S, first stage, batch 2

Writes results/memory.csv and results/memory.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from step_harness import RESULTS, bar_chart, load_line, memory_summary, write_csv

from effnetv2_jax import cpu
from effnetv2_jax.models.factory import abstract_model
from effnetv2_jax.train import progressive
from effnetv2_jax.train.optim import make_optimizer
from effnetv2_jax.train.state import create_train_state, split_model
from effnetv2_jax.train.step import make_train_step

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Devices (chips, or v3 TensorCores) that JAX sees for each preset of train/hardware.py, and
# each one's memory in GiB.
CHIPS = {"tpu_v3_8": (8, 16), "tpu_v3_32": (32, 16), "tpu_v4_32": (16, 32),
         "tpu_v5e_32": (32, 16), "gpu_8xa100": (8, 40), "gpu_1x": (1, 80)}


def recipe(model: str, hw: str):
    path = CONFIGS / f"{model}_imagenet.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{model}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(f"code,hw={hw}")


def step_memory(config, image_size: int, per_chip_batch: int, *, remat: bool,
                conv_impl: str) -> tuple[dict, float]:
    """memory_summary of the compiled train step on one chip's shapes, and compile seconds."""
    model = abstract_model(config.model.name, num_classes=1000, dtype=config.model.dtype,
                           conv_impl=conv_impl, remat=remat)
    graphdef, params, batch_stats = split_model(model)
    tx = make_optimizer(learning_rate=0.1, optimizer=config.train.optimizer,
                        weight_decay=config.train.weight_decay)
    state = jax.eval_shape(lambda p, s: create_train_state(p, s, tx), params, batch_stats)
    step = make_train_step(graphdef, tx, learning_rate=0.1, seed=0,
                           dropout_rate=config.progressive.dropout_rate[-1],
                           label_smoothing=config.train.label_smoothing,
                           ema_max_decay=config.train.ema_decay)
    batch = {"image": jax.ShapeDtypeStruct((per_chip_batch, image_size, image_size, 3),
                                           jnp.float32),
             "label": jax.ShapeDtypeStruct((per_chip_batch, 1000), jnp.float32)}
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    return memory_summary(compiled), time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hw", default="tpu_v5e_32", choices=sorted(CHIPS))
    p.add_argument("--models", default="s,m,l", help="comma-separated: s, m, l")
    p.add_argument("--remat", default="l", help="models also compiled with model.remat")
    p.add_argument("--remat-only", action="store_true",
                   help="compile only the remat variant of the --remat models")
    p.add_argument("--conv-impl", default="xla", help="xla (the TPU path) or cpu")
    p.add_argument("--stages", default="", help="comma-separated stage indices (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke run: S, first stage, batch 2")
    p.add_argument("--out", default=str(RESULTS), help="output folder")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.remat = "s", ""
    chips, gib = CHIPS[args.hw]
    print(f"hardware preset {args.hw}: {chips} devices x {gib} GiB; {load_line()}", flush=True)
    rows = []
    print(f"{'model':6s} {'stage':>5s} {'size':>5s} {'batch':>5s} {'remat':>5s} "
          f"{'temp GiB':>9s} {'peak GiB':>9s} {'fits':>5s} {'compile s':>9s}")
    for name in args.models.split(","):
        config = recipe(name, args.hw)
        per_chip = config.train.global_batch_size // chips
        stages = progressive.make_stages(
            progressive.preset(config.model.name, config.progressive.preset,
                               config.progressive.num_stages),
            config.progressive.num_stages, config.progressive.num_stages)
        if args.stages:
            stages = [stages[int(i)] for i in args.stages.split(",")]
        if args.quick:
            stages, per_chip = stages[:1], 2
        for stage in stages:
            variants = (False, True) if name in args.remat.split(",") else (False,)
            if args.remat_only:
                variants = tuple(v for v in variants if v)
            for remat in variants:
                memory, seconds = step_memory(config, stage.image_size, per_chip, remat=remat,
                                              conv_impl=args.conv_impl)
                peak_gib, temp_gib = memory["peak_mib"] / 1024, memory["temp_mib"] / 1024
                rows.append({"model": config.model.name, "hw": args.hw, "stage": stage.index,
                             "image_size": stage.image_size, "per_chip_batch": per_chip,
                             "dtype": config.model.dtype, "remat": remat,
                             "args_gib": memory["args_mib"] / 1024, "temp_gib": temp_gib,
                             "peak_gib": peak_gib, "chip_gib": gib, "fits": peak_gib <= gib,
                             "compile_s": seconds, "conv_impl": args.conv_impl})
                print(f"{name:6s} {stage.index:5d} {stage.image_size:5d} {per_chip:5d} "
                      f"{str(remat):>5s} {temp_gib:9.2f} {peak_gib:9.2f} "
                      f"{str(peak_gib <= gib):>5s} {seconds:9.1f}", flush=True)
    print(load_line(), flush=True)
    out = Path(args.out)
    write_csv(rows, out / "memory.csv")
    keys = list(dict.fromkeys((r["model"], r["image_size"]) for r in rows))
    labels = [f"{model[-1].upper()} {size}px" for model, size in keys]
    peaks = {(r["model"], r["image_size"], r["remat"]): r["peak_gib"] for r in rows}
    series = {}
    for remat, name in ((False, "peak GiB"), (True, "peak GiB, remat")):
        if any(r["remat"] == remat for r in rows):
            series[name] = [peaks.get((*key, remat), float("nan")) for key in keys]
    bar_chart(out / "memory.png", labels, series, ylabel="GiB per chip",
              title=f"train step peak memory per progressive stage ({args.hw}, "
                    f"CPU memory_analysis)", hline=(gib, f"{gib} GiB chip"))
    return rows


if __name__ == "__main__":
    cpu.configure_process(restart_allocator=False)  # XLA:CPU flags, as the CLIs
    main()
