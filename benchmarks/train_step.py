"""Whole-model train step (or eval forward): compile time, step time, images/s, FLOP/s against
the matmul peak.

For each conv implementation given, an EfficientNet train step (train-mode forward, softmax
cross-entropy, backward, SGD or RMSProp update, state donated) is compiled ahead of time and run;
its steps alternate with the other implementations' so that all see the same background load.

    python benchmarks/train_step.py                                  # V2-S, 128 px, batch 32, f32
    python benchmarks/train_step.py --conv-impl xla,cpu --steps 5
    python benchmarks/train_step.py --image-size 300 --dtype bfloat16 --conv-impl xla  # accelerators
    python benchmarks/train_step.py --eval --image-size 224          # inference forward
    python benchmarks/train_step.py --quick                          # smoke: 64 px, batch 4

Columns: compile seconds (trace + lower, compile), median step seconds after one warm-up step,
images/s, model FLOPs per image (2 x multiply-adds x 3 for forward + backward, from
`count_flops`; x1 with --eval), achieved FLOP/s and its ratio to a [2048, 2048] float32 matmul
measured in the same run (the faster of jax's and, on the CPU, numpy's BLAS: XLA:CPU's GEMM is
the slower here; the CSV also has the ratio to jax's alone), and XLA's peak memory for the step
(arguments + outputs + temporaries - donated). Model FLOPs count direct convs: the cpu impl's
Winograd 3x3 convs (`effnetv2_jax/cpu/winograd.py`) do 4x fewer multiply-adds in their GEMMs,
so its achieved FLOP/s is an effective rate.
Writes results/train_step.csv and results/train_step.png (or `--name`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax

from step_harness import (OPTIMIZERS, RESULTS, alternate, bar_chart, compile_eval,
                          compile_train_step, eval_runner, load1, load_line, matmul_peaks, median,
                          train_runner, write_csv)

from effnetv2_jax import cpu


def measure(args) -> list[dict]:
    impls = args.conv_impl.split(",")
    peaks = matmul_peaks(args.dtype, args.peak_size)
    peak = max(peaks.values())
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; matmul peak "
          f"({args.dtype}, {args.peak_size}^2): {peak / 1e9:.1f} GFLOP/s (the higher of "
          f"{', '.join(f'{k} {v / 1e9:.1f}' for k, v in peaks.items())}); {load_line()}",
          flush=True)
    setups, runners = {}, {}
    for impl in impls:
        common = dict(image_size=args.image_size, batch=args.batch, dtype=args.dtype,
                      conv_impl=impl)
        if args.eval:
            compiled, variables, images = compile_eval(args.variant, **common)
            runners[impl] = eval_runner(compiled, variables, images)
        else:
            compiled, state, batch = compile_train_step(
                args.variant, optimizer=args.optimizer, remat=args.remat, **common)
            runners[impl] = train_runner(compiled, state, batch)
        setups[impl] = compiled
        print(f"  {impl}: traced in {compiled.trace_s:.1f} s, compiled in "
              f"{compiled.compile_s:.1f} s", flush=True)
    times = alternate(runners, args.steps)
    rows = []
    for impl in impls:
        c = setups[impl]
        step_s = median(times[impl])
        flops = c.flops_per_image * args.batch / step_s
        rows.append({"variant": args.variant, "image_size": args.image_size,
                     "batch": args.batch, "dtype": args.dtype, "conv_impl": impl,
                     "workload": "eval" if args.eval else "train",
                     "optimizer": "" if args.eval else args.optimizer, "remat": args.remat,
                     "trace_s": c.trace_s, "compile_s": c.compile_s, "step_s": step_s,
                     "step_min_s": min(times[impl]), "images_per_s": args.batch / step_s,
                     "gflop_per_image": c.flops_per_image / 1e9,
                     "achieved_gflops": flops / 1e9, "matmul_peak_gflops": peak / 1e9,
                     "fraction_of_peak": flops / peak,
                     "jax_matmul_gflops": peaks["jax"] / 1e9,
                     "fraction_of_jax_matmul": flops / peaks["jax"],
                     "peak_memory_mib": c.memory["peak_mib"],
                     "temp_memory_mib": c.memory["temp_mib"], "load1": load1(),
                     "backend": jax.default_backend()})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'impl':5s} {'trace s':>8s} {'compile s':>9s} {'step s':>7s} {'img/s':>7s} "
          f"{'GFLOP/img':>9s} {'GFLOP/s':>8s} {'of peak':>7s} {'of jax mm':>9s} {'peak MiB':>9s}")
    for r in rows:
        print(f"{r['conv_impl']:5s} {r['trace_s']:8.1f} {r['compile_s']:9.1f} "
              f"{r['step_s']:7.3f} {r['images_per_s']:7.2f} {r['gflop_per_image']:9.2f} "
              f"{r['achieved_gflops']:8.1f} {r['fraction_of_peak']:7.1%} "
              f"{r['fraction_of_jax_matmul']:9.1%} {r['peak_memory_mib']:9.0f}")
    print(load_line(), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="efficientnetv2-s")
    p.add_argument("--image-size", type=int, default=128, help="pixels")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--conv-impl", default="cpu", help="comma-separated: xla, cpu")
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    p.add_argument("--remat", action="store_true", help="recompute each block in the backward")
    p.add_argument("--eval", action="store_true",
                   help="time the inference forward (BN running statistics) instead")
    p.add_argument("--peak-size", type=int, default=2048,
                   help="matmul size for the peak (8192 on a GPU or TPU)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, batch 4, 2 steps")
    p.add_argument("--out", default=str(RESULTS), help="output folder")
    p.add_argument("--name", default="train_step", help="CSV / PNG file stem")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.batch, args.steps = 64, 4, 2
    rows = measure(args)
    print_table(rows)
    out = Path(args.out)
    write_csv(rows, out / f"{args.name}.csv")
    bar_chart(out / f"{args.name}.png", [r["conv_impl"] for r in rows],
              {"images/s": [r["images_per_s"] for r in rows]}, ylabel="images / s",
              title=f"{args.variant} {'eval forward' if args.eval else 'train step'}, "
                    f"{args.image_size} px, batch {args.batch}, "
                    f"{args.dtype}, {args.optimizer}",
              annotate=[f"{r['fraction_of_peak']:.0%} of matmul peak\n"
                        f"compile {r['compile_s']:.0f} s" for r in rows])
    return rows


if __name__ == "__main__":
    cpu.configure_process()  # XLA:CPU flags and allocator, as effnetv2_jax.main
    main()
