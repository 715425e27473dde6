"""Where a train step's (or eval forward's) time goes: XLA op times from `jax.profiler`, grouped
by the source line of the model that emitted them.

Runs the step a few times under `jax.profiler.trace`, reads the op events of the trace (on the
CPU backend one per executed HLO thunk, with its `hlo_op` name), maps each op to the JAX source
line in its HLO metadata, and prints the top lines and op kinds by total time. Ops that run in
parallel on the thread pool are summed, so the total can exceed the wall time.

    python benchmarks/profile_step.py                        # V2-S train, 128 px, batch 32
    python benchmarks/profile_step.py --eval --image-size 224
    python benchmarks/profile_step.py --quick

Writes results/profile_step.csv (one row per source line) and results/profile_step.png.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax

from step_harness import (RESULTS, bar_chart, compile_eval, compile_train_step, eval_runner,
                     load_line, train_runner, write_csv)

from effnetv2_jax import cpu

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{([^}]*)\}")
_FIELD = re.compile(r'(\w+)="?([^" ]*)"?')
_TABLE_ROW = re.compile(r"^(\d+) (.*)$")


def _tables(hlo_text: str) -> dict[str, dict[int, str]]:
    """The FileNames, FunctionNames, FileLocations and StackFrames tables that head the HLO
    text: {table: {id: row text}}."""
    tables, current = {}, None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
        elif current is not None:
            m = _TABLE_ROW.match(line)
            if not m:
                if tables.keys() >= {"StackFrames"}:
                    break
                current = None
                continue
            current[int(m.group(1))] = m.group(2).strip('"')
    return tables


def op_sources(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> ('file:line function', op_name): the innermost Python frame
    of the JAX call that emitted it, from the metadata's stack frame."""
    t = _tables(hlo_text)
    frames = {}
    for frame_id, row in t.get("StackFrames", {}).items():
        loc = dict(_FIELD.findall(t["FileLocations"][int(dict(_FIELD.findall(row))[
            "file_location_id"])]))
        frames[frame_id] = (f"{Path(t['FileNames'][int(loc['file_name_id'])]).name}:"
                            f"{loc['line']} {t['FunctionNames'][int(loc['function_name_id'])]}")
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        meta = dict(_FIELD.findall(m.group(2)))
        frame = frames.get(int(meta.get("stack_frame_id", -1)), "?")
        out[m.group(1)] = (frame, meta.get("op_name", ""))
    return out


def op_times(trace_dir: str) -> dict[str, float]:
    """Total microseconds per HLO op name over every profiled run."""
    files = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    if not files:
        raise FileNotFoundError(f"no trace under {trace_dir}: did jax.profiler write one?")
    totals = collections.Counter()
    with gzip.open(files[0]) as f:
        for event in json.load(f)["traceEvents"]:
            op = (event.get("args") or {}).get("hlo_op")
            if event.get("ph") == "X" and op:
                totals[op] += event.get("dur", 0.0)
    return totals


def _kind(op: str) -> str:
    """'fusion.12' -> 'fusion'; 'convolution.3' -> 'convolution'."""
    return re.sub(r"[.\d]+$", "", op)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="efficientnetv2-s")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--conv-impl", default="cpu")
    p.add_argument("--eval", action="store_true", help="profile the eval forward instead")
    p.add_argument("--runs", type=int, default=2, help="profiled runs after one warm-up")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, batch 4, 1 run")
    p.add_argument("--out", default=str(RESULTS), help="output folder")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.batch, args.runs = 64, 4, 1
    common = dict(image_size=args.image_size, batch=args.batch, conv_impl=args.conv_impl)
    if args.eval:
        compiled, variables, images = compile_eval(args.variant, **common)
        run = eval_runner(compiled, variables, images)
    else:
        compiled, state, batch = compile_train_step(args.variant, **common)
        run = train_runner(compiled, state, batch)
    sources = op_sources(compiled.fn.as_text())
    run()
    wall = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(args.runs):
                wall += run()
        times = op_times(tmp)
    total = sum(times.values())
    by_line, by_kind, example = collections.Counter(), collections.Counter(), {}
    for op, us in times.items():
        src, name = sources.get(op, ("?", ""))
        by_line[src] += us
        by_kind[_kind(op)] += us
        example.setdefault(src, name.split("/")[-1] if name else op)
    what = "eval forward" if args.eval else "train step"
    print(f"{args.variant} {what}, {args.image_size} px, batch {args.batch}, {args.conv_impl} "
          f"convs: {wall / args.runs:.3f} s wall per run, {total / 1e6 / args.runs:.3f} s of "
          f"op time per run; {load_line()}")
    print(f"{'source line':44s} {'s/run':>7s} {'share':>6s}  example op")
    rows = []
    for src, us in by_line.most_common():
        rows.append({"source": src, "seconds_per_run": us / 1e6 / args.runs,
                     "share": us / total, "example_op": example[src]})
    for r in rows[:args.top]:
        print(f"{r['source']:44s} {r['seconds_per_run']:7.3f} {r['share']:6.1%}  "
              f"{r['example_op'][:60]}")
    print("by op kind: " + ", ".join(f"{k} {us / total:.0%}" for k, us in
                                     by_kind.most_common(8)))
    print(load_line(), flush=True)
    out = Path(args.out)
    stem = "profile_eval" if args.eval else "profile_step"
    write_csv(rows, out / f"{stem}.csv")
    top = rows[:15]
    bar_chart(out / f"{stem}.png", [r["source"] for r in top],
              {"seconds per run": [r["seconds_per_run"] for r in top]}, ylabel="seconds",
              title=f"{args.variant} {what} {args.image_size} px b{args.batch}: op time by "
                    f"source line")
    return rows


if __name__ == "__main__":
    cpu.configure_process()  # XLA:CPU flags and allocator, as effnetv2_jax.main
    main()
