"""Progressive learning's training-time claim, measured: N steps under the progressive size
schedule against the same N steps at the final size, and the speed-up FLOPs predict.

The paper trains small images first (Algorithm 1) and credits part of EfficientNetV2's
training speed to it. Here the schedule is scaled to CPU sizes: `--sizes 64,128` with 4 stages
gives 64, 85, 106, 128 px (`train.progressive.make_stages`, the loop's own rule), N/4 steps
each. Every stage's step is compiled ahead of time (as the training loop does, so compilation
is not in the timed wall time); the N steps are dispatched back to back and waited for once at
the end. Each schedule runs once untimed first; then the two alternate `--repeats` times and
the table shows the medians.

    python benchmarks/progressive.py                       # V2-S, 64 -> 128 px, 12 steps, b32
    python benchmarks/progressive.py --steps 8 --batch 16 --quick

predicted speed-up = FLOPs(N steps at final size) / FLOPs(N progressive steps);
measured speed-up = wall(fixed) / wall(progressive); the target is measured >= 90% predicted.
Writes results/progressive.csv and results/progressive.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

from step_harness import (RESULTS, bar_chart, compile_train_step, load1, load_line, median,
                     write_csv)

from effnetv2_jax import cpu
from effnetv2_jax.train import progressive


def _schedule_sizes(first: int, last: int, num_stages: int, steps: int) -> list[int]:
    """Image size of each of the `steps` steps under the loop's stage rule."""
    schedule = progressive.Schedule((first, last), (0, 0), (0, 0), (0, 0), (0.0, 0.0))
    stages = progressive.make_stages(schedule, num_stages, steps)
    return [progressive.stage_at(stages, step).image_size for step in range(steps)]


def _wall(fns: dict, state, batches: dict, sizes: list[int], seed: int = 0):
    """Seconds to run one step per entry of `sizes` (dispatched back to back, one wait at the
    end), and the final state (each step donates its input state)."""
    base = jax.random.PRNGKey(seed)
    start = time.perf_counter()
    loss = None
    for step, size in enumerate(sizes):
        state, loss = fns[size](state, *batches[size], jax.random.fold_in(base, step))
    jax.block_until_ready(loss)
    return time.perf_counter() - start, state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="efficientnetv2-s")
    p.add_argument("--sizes", default="64,128", help="first,last stage size in pixels")
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--steps", type=int, default=12, help="N, steps of each schedule")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--conv-impl", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each schedule")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 -> 64 px, batch 4")
    p.add_argument("--out", default=str(RESULTS), help="output folder")
    args = p.parse_args(argv)
    first, last = (int(s) for s in args.sizes.split(","))
    if args.quick:
        first, last, args.batch, args.steps, args.stages, args.repeats = 32, 64, 4, 4, 2, 1
    sizes = _schedule_sizes(first, last, args.stages, args.steps)
    print(f"{args.variant}, batch {args.batch}, {args.steps} steps; progressive sizes "
          f"{sorted(set(sizes))}; {load_line()}", flush=True)

    schedules = {"progressive": sizes, "fixed": [last] * args.steps}
    fns, batches, flops, state = {}, {}, {}, None
    for size in sorted(set(sizes)):
        compiled, fresh, batches[size] = compile_train_step(
            args.variant, image_size=size, batch=args.batch, conv_impl=args.conv_impl)
        fns[size], flops[size] = compiled.fn, compiled.flops_per_image
        state = fresh if size == last else state  # one state, carried through every stage
        print(f"  {size} px compiled in {compiled.trace_s + compiled.compile_s:.1f} s",
              flush=True)
    # Warm-up: each schedule once, untimed. The first back-to-back run of a schedule was slower
    # than the next ones (8.6 vs 7.1 s progressive, 12.4 vs 11.2 s fixed, in one run), each of
    # whose steps was as fast as when run one at a time; a training stage pays that once in
    # thousands of steps.
    for plan in schedules.values():
        _, state = _wall(fns, state, batches, plan)
    times = {name: [] for name in schedules}
    for _ in range(args.repeats):
        for name, plan in schedules.items():
            seconds, state = _wall(fns, state, batches, plan)
            times[name].append(seconds)
    wall = {name: median(t) for name, t in times.items()}
    total_flops = {name: args.batch * sum(flops[s] for s in plan)
                   for name, plan in schedules.items()}
    predicted = total_flops["fixed"] / total_flops["progressive"]
    measured = wall["fixed"] / wall["progressive"]
    rows = [{"schedule": name, "sizes": " ".join(map(str, plan)), "steps": args.steps,
             "batch": args.batch, "wall_s": wall[name],
             "runs_s": " ".join(f"{t:.2f}" for t in times[name]),
             "tflop": total_flops[name] / 1e12,
             "achieved_gflops": total_flops[name] / wall[name] / 1e9,
             "predicted_speedup": predicted, "measured_speedup": measured,
             "fraction_of_predicted": measured / predicted, "conv_impl": args.conv_impl,
             "load1": load1()} for name, plan in schedules.items()]
    print(f"{'schedule':12s} {'wall s':>8s} {'TFLOP':>7s} {'GFLOP/s':>8s}")
    for r in rows:
        print(f"{r['schedule']:12s} {r['wall_s']:8.2f} {r['tflop']:7.3f} "
              f"{r['achieved_gflops']:8.1f}")
    print(f"speed-up: measured {measured:.2f}x, predicted by FLOPs {predicted:.2f}x "
          f"({measured / predicted:.0%} of predicted; target >= 90%)")
    print(load_line(), flush=True)
    out = Path(args.out)
    write_csv(rows, out / "progressive.csv")
    bar_chart(out / "progressive.png", [r["schedule"] for r in rows],
              {"wall seconds": [r["wall_s"] for r in rows]}, ylabel="seconds",
              title=f"{args.variant}: {args.steps} train steps, batch {args.batch}, "
                    f"{first}->{last} px vs {last} px",
              annotate=["", f"measured {measured:.2f}x, FLOPs predict {predicted:.2f}x"])
    return rows


if __name__ == "__main__":
    cpu.configure_process()  # XLA:CPU flags and allocator, as effnetv2_jax.main
    main()
