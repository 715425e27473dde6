"""The real train steps of the V2 recipes compiled for TPU slices on this machine (libtpu, no
TPU): per-chip memory, FLOPs, bytes and a roofline estimate per progressive stage, with and
without `model.remat`, and with the project's BatchNorm backward or XLA's autodiff of it.

Each recipe (configs/{s,m,l}_imagenet.py, `code` schedule) is planned exactly as training plans
it (`effnetv2_jax.train.aot`, the `--mode=compile` of main.py) at `--per-chip-batch` images per
chip in `--dtype`, for each topology; every distinct stage's train step (or only the last, the
largest, with `--stages last`) is compiled by libtpu. This is what a TPU run will hold, not a
CPU approximation; a full-size step takes 4-10 minutes to compile on 2 cores, so the default
set is a few hours. The variants:
  remat  off | on: `model.remat` (per-block recomputation, models/remat.py).
  bn     custom | plain: the training BatchNorm's own backward (models/layers.py
         `batch_norm_act`, which recomputes the normalised values from x) or XLA's autodiff of
         the same forward (it keeps what it likes).

    python benchmarks/tpu_compile.py --models s --topologies v5litepod-4 --stages last
    python benchmarks/tpu_compile.py --models s,m,l --topologies v4-8,v5litepod-4,v5p-8 \
        --remat off,on                                       # the README's table
    python benchmarks/tpu_compile.py --models s --topologies v4-8,v5litepod-4 --stages last \
        --bn custom,plain --remat off,on                     # the training-path choices

Writes results/tpu_compile.csv and results/tpu_compile.png (or `--name`); rows are added to the
CSV as each compile finishes, so a long run that is stopped keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import sys
import time
from pathlib import Path

from effnetv2_jax.train import topology

topology.quiet_libtpu()  # before libtpu loads: this machine is not a TPU VM

from step_harness import RESULTS, bar_chart  # noqa: E402

from effnetv2_jax.models import layers  # noqa: E402
from effnetv2_jax.train import aot  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def recipe(model: str):
    path = CONFIGS / f"{model}_imagenet.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{model}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("code")


@contextlib.contextmanager
def batch_norm_backward(kind: str):
    """"custom": the model as it is; "plain": `batch_norm_act` replaced by its forward alone,
    so that XLA differentiates it (same values, XLA's choice of what to keep)."""
    if kind == "custom":
        yield
        return
    original = layers.batch_norm_act
    layers.batch_norm_act = lambda x, scale, bias, groups, epsilon, activation: (
        layers._bn_act_fwd(x, scale, bias, groups, epsilon, activation)[0])  # noqa: SLF001
    try:
        yield
    finally:
        layers.batch_norm_act = original


def measure(args, model: str, accelerator: str, remat: bool, bn: str) -> list[dict]:
    config = recipe(model)
    devices = topology.parse(accelerator).devices
    config.train.global_batch_size = config.eval.global_batch_size = (
        args.per_chip_batch * devices)
    config.model.dtype = args.dtype
    config.model.remat = remat
    start = time.perf_counter()
    with batch_norm_backward(bn):
        report = aot.compile_run(config, accelerator, stages=args.stages)
    print(aot.format_report(report), f"\n({time.perf_counter() - start:.0f} s)", flush=True)
    return [{"model": config.model.name, "topology": report.target, "device": report.device_kind,
             "remat": remat, "bn_backward": bn, "dtype": args.dtype, "step": s.step,
             "image_size": s.image_size, "batch_per_device": s.batch_per_device,
             "compile_s": s.compile_s, "argument_gib": s.argument_bytes / 2**30,
             "temp_gib": s.temp_bytes / 2**30, "total_gib": s.total_bytes / 2**30,
             "hbm_gib": (s.device_memory_bytes or 0) / 2**30, "fits": s.fits,
             "tflop": s.flops / 1e12, "gb_accessed": s.bytes_accessed / 1e9,
             "collectives": sum(s.collectives.values()),
             "roofline_ms": (s.roofline_s or 0) * 1e3,
             "est_images_per_s": s.images_per_s_per_device or 0, "note": s.fit_note or s.error}
            for s in report.steps]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="s,m,l", help="recipes: s, m, l (configs/*_imagenet.py)")
    parser.add_argument("--topologies", default="v4-8,v5litepod-4",
                        help="gcloud accelerator names or libtpu topologies")
    parser.add_argument("--per-chip-batch", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--remat", default="off", help="off, on, or off,on")
    parser.add_argument("--bn", default="custom", help="custom, plain, or custom,plain")
    parser.add_argument("--stages", default="all", choices=aot.STAGES)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="tpu_compile")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{args.name}.csv"
    rows: list[dict] = []
    for model in args.models.split(","):
        for accelerator in args.topologies.split(","):
            for remat in args.remat.split(","):
                for bn in args.bn.split(","):
                    rows += measure(args, model, accelerator, remat == "on", bn)
                    with open(csv_path, "w", newline="") as f:  # after each: keep partial runs
                        writer = csv.DictWriter(f, list(rows[0]))
                        writer.writeheader()
                        writer.writerows(rows)
    variants = [(remat == "on", bn) for remat in args.remat.split(",")
                for bn in args.bn.split(",")]
    labels = [f"{r['model'].split('-')[-1]} {r['topology']}\n{r['step']} {r['image_size']}px"
              for r in rows if (r["remat"], r["bn_backward"]) == variants[0]]
    series = {f"remat {'on' if remat else 'off'}, BN {bn}": [
        r["total_gib"] for r in rows if (r["remat"], r["bn_backward"]) == (remat, bn)]
        for remat, bn in variants}
    if labels:
        bar_chart(out / f"{args.name}.png", labels, series, ylabel="GiB per chip",
                  title=f"Train step memory per chip, TPU compile ({args.per_chip_batch} per "
                        f"chip, {args.dtype})")
    print(f"wrote {csv_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
