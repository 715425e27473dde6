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

"total" is trace + lower + compile. Two ways are measured, each cold then warm: JAX's cache
alone (`plain`: a restart still traces every stage), and the training loop's way, which also
stores each traced step (`train/exported_steps.py`: a restart loads it instead of tracing).
On XLA:CPU a warm total is then mostly the executable's deserialisation (~4 s for V2-S).
Last, a restart in each stage: a fresh process that loads only that stage's step, as the
training loop does on a restart (later stages load when they begin; finished ones never), against
a fresh start, which compiles every stage before its first step.
Writes results/compile.csv and results/compile.png.
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

from effnetv2_jax import cpu

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
                                     num_classes=10 if args.quick else 1000,
                                     exported_cache_dir=args.cache_dir if args.stored else None)
        total = c.compile_s if args.stored else c.trace_s + c.compile_s
        print(json.dumps({"image_size": size, "total_s": total}), flush=True)


def _run_worker(args, cache_dir: str, stored: bool, sizes: str | None = None) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", "--cache-dir", cache_dir,
           *(["--stored"] if stored else []),
           "--variant", args.variant, "--sizes", sizes or args.sizes, "--batch", str(args.batch),
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
    p.add_argument("--stored", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(RESULTS), help="output folder")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch = "32,48", 2
    if args.worker:
        return _worker(args)
    print(f"{args.variant}, stages {args.sizes} px, batch {args.batch}, {args.conv_impl} "
          f"convs; {load_line()}", flush=True)
    runs, restarts = {}, []
    for way, stored in (("plain", False), ("stored", True)):
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(args.cache_dir or tmp, f"compile_cache_{way}")
            runs[way] = (_run_worker(args, cache, stored), _run_worker(args, cache, stored))
            if stored:  # a restart in each stage: a fresh process loads that stage alone
                restarts = [_run_worker(args, cache, True, sizes=size)[0]["total_s"]
                            for size in args.sizes.split(",")]
    rows = []
    print(f"{'stage':>6s} {'size':>5s} {'cold s':>8s} {'warm s':>8s} {'warm/cold':>9s} "
          f"{'warm s, stored trace':>20s} {'warm/cold':>9s} {'restart here s':>14s}")
    for i, stage in enumerate(zip(*runs["plain"], *runs["stored"])):
        cold, warm, cold_stored, warm_stored = (r["total_s"] for r in stage)
        rows.append({"stage": i, "image_size": stage[0]["image_size"], "batch": args.batch,
                     "cold_total_s": cold, "warm_total_s": warm,
                     "warm_over_cold": warm / cold, "cold_stored_s": cold_stored,
                     "warm_stored_s": warm_stored, "warm_stored_over_cold": warm_stored / cold,
                     "restart_here_s": restarts[i], "load1": load1()})
        print(f"{i:6d} {stage[0]['image_size']:5d} {cold:8.1f} {warm:8.1f} {warm / cold:9.1%} "
              f"{warm_stored:20.1f} {warm_stored / cold:9.1%} {restarts[i]:14.1f}")
    cold_sum = sum(r["cold_total_s"] for r in rows)
    for name, column in (("cache only", "warm_total_s"), ("stored traces", "warm_stored_s")):
        warm_sum = sum(r[column] for r in rows)
        print(f"all stages, {name}: cold {cold_sum:.1f} s, warm {warm_sum:.1f} s "
              f"({warm_sum / cold_sum:.1%} of cold; target <= 10%)")
    # What the training loop waits for before its first step: a fresh start compiles every
    # stage (to fail early if one cannot fit); a restart loads its current stage only, and
    # each later stage's step when that stage begins (train/loop.py compile_train_steps).
    worst = max(restarts)
    print(f"restart: {worst:.1f} s or less before its first step, in any stage "
          f"({worst / cold_sum:.1%} of a fresh start's {cold_sum:.1f} s; target <= 10%); "
          f"then each later stage's step loads as the stage begins")
    print(load_line(), flush=True)
    out = Path(args.out)
    write_csv(rows, out / "compile.csv")
    bar_chart(out / "compile.png", [f"{r['image_size']} px" for r in rows],
              {"cold": [r["cold_total_s"] for r in rows],
               "warm cache": [r["warm_total_s"] for r in rows],
               "warm cache + stored trace": [r["warm_stored_s"] for r in rows],
               "restart in this stage": [r["restart_here_s"] for r in rows]},
              ylabel="seconds (trace + lower + compile)",
              title=f"{args.variant} train step compile per stage, batch {args.batch}",
              annotate=[f"{r['warm_stored_over_cold']:.0%}" for r in rows])
    return rows


if __name__ == "__main__":
    cpu.configure_process()  # XLA:CPU flags and allocator, as effnetv2_jax.main
    main()
