"""Per-stage compile seconds of the train step, cold and with the persistent compilation cache
warm: what a restarted (preempted) run pays before its first step.

Each measurement is a fresh Python process (a restart), compiling one train step per
progressive stage of the recipe's schedule ahead of time, on abstract inputs (nothing is
allocated or run). The first process starts from an empty cache folder (cold), the second
reuses it (warm), through JAX's persistent compilation cache, the mechanism the training loop
enables in `<workdir>/compile_cache` (config `checkpoint.compile_cache_dir`).

    python benchmarks/compile.py                      # V2-S code schedule: 171, 214, 257, 300 px
    python benchmarks/compile.py --batch 8 --conv-impl xla
    python benchmarks/compile.py --quick              # smoke: a tiny 2-block model

"total" is trace + lower + compile: tracing and lowering are never cached, so they bound the
warm time from below. Writes results/compile.csv and results/compile.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from step_harness import RESULTS, bar_chart, load1, load_line, write_csv

QUICK_BLOCKS = ("r1_k3_s1_e1_i8_o8_c1", "r1_k3_s2_e4_i8_o16_se0.25")


def _worker(args) -> None:
    """Compiles every stage once with the cache in `args.cache_dir`; one JSON line each."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.set_cache_dir(args.cache_dir)
    from step_harness import compile_train_step

    from effnetv2_jax.models.arch import ArchConfig
    from effnetv2_jax.models.factory import resolve_model_args

    variant = args.variant
    if args.quick:
        arch, _ = resolve_model_args(args.variant, {})
        variant = arch.replace(block_strings=QUICK_BLOCKS)
        assert isinstance(variant, ArchConfig)
    for size in (int(s) for s in args.sizes.split(",")):
        c, _, _ = compile_train_step(variant, image_size=size, batch=args.batch,
                                     conv_impl=args.conv_impl, abstract=True,
                                     num_classes=10 if args.quick else 1000)
        print(json.dumps({"image_size": size, "trace_s": c.trace_s, "compile_s": c.compile_s}),
              flush=True)


def _run_worker(args, cache_dir: str) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", "--cache-dir", cache_dir,
           "--variant", args.variant, "--sizes", args.sizes, "--batch", str(args.batch),
           "--conv-impl", args.conv_impl] + (["--quick"] if args.quick else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"compile worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="efficientnetv2-s")
    p.add_argument("--sizes", default="171,214,257,300",
                   help="stage sizes in pixels (default: V2-S's code schedule)")
    p.add_argument("--batch", type=int, default=32, help="per-device batch")
    p.add_argument("--conv-impl", default="cpu")
    p.add_argument("--cache-dir", default="", help="cache folder (default: a fresh temporary)")
    p.add_argument("--quick", action="store_true", help="smoke run: a 2-block model at 32, 48 px")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(RESULTS), help="output folder")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch = "32,48", 2
    if args.worker:
        return _worker(args)
    print(f"{args.variant}, stages {args.sizes} px, batch {args.batch}, {args.conv_impl} "
          f"convs; {load_line()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or os.path.join(tmp, "compile_cache")
        cold = _run_worker(args, cache)
        warm = _run_worker(args, cache)
    rows = []
    print(f"{'stage':>6s} {'size':>5s} {'cold total s':>12s} {'cold compile s':>14s} "
          f"{'warm total s':>12s} {'warm compile s':>14s} {'warm/cold':>9s}")
    for i, (c, w) in enumerate(zip(cold, warm)):
        cold_total, warm_total = c["trace_s"] + c["compile_s"], w["trace_s"] + w["compile_s"]
        rows.append({"stage": i, "image_size": c["image_size"], "batch": args.batch,
                     "cold_trace_s": c["trace_s"], "cold_compile_s": c["compile_s"],
                     "warm_trace_s": w["trace_s"], "warm_compile_s": w["compile_s"],
                     "cold_total_s": cold_total, "warm_total_s": warm_total,
                     "warm_over_cold": warm_total / cold_total, "load1": load1()})
        print(f"{i:6d} {c['image_size']:5d} {cold_total:12.1f} {c['compile_s']:14.1f} "
              f"{warm_total:12.1f} {w['compile_s']:14.1f} {warm_total / cold_total:9.1%}")
    cold_sum = sum(r["cold_total_s"] for r in rows)
    warm_sum = sum(r["warm_total_s"] for r in rows)
    print(f"all stages: cold {cold_sum:.1f} s, warm {warm_sum:.1f} s "
          f"({warm_sum / cold_sum:.1%} of cold; target <= 10%)")
    print(load_line(), flush=True)
    out = Path(args.out)
    write_csv(rows, out / "compile.csv")
    bar_chart(out / "compile.png", [f"{r['image_size']} px" for r in rows],
              {"cold": [r["cold_total_s"] for r in rows],
               "warm cache": [r["warm_total_s"] for r in rows]},
              ylabel="seconds (trace + lower + compile)",
              title=f"{args.variant} train step compile per stage, batch {args.batch}",
              annotate=[f"{r['warm_over_cold']:.0%}" for r in rows])
    return rows


if __name__ == "__main__":
    main()
