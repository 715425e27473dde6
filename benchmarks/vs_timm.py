"""effnetv2_jax against timm's `tf_efficientnetv2_s` (PyTorch) on the same machine, in one run.

Two workloads, each timed for both libraries with the runs alternating (ours, timm, ours, ...)
so that both see the same background load:
  * train step: V2-S, 128 px, batch 32, float32, SGD (momentum 0.9) or RMSProp (decay 0.9,
    eps 1e-3, momentum 0.9): forward in train mode, softmax cross-entropy, backward, update;
  * eval forward: V2-S, 224 px, batch 32, float32, inference mode.

    python benchmarks/vs_timm.py                    # results/vs_timm.csv + .png
    python benchmarks/vs_timm.py --optimizer rmsprop --repeats 7
    python benchmarks/vs_timm.py --quick            # smoke run: 64 px, batch 4

timm runs channels_last (faster for its depthwise and 1x1 convs on CPU; `--no-channels-last`
to compare) with all cores (`torch.set_num_threads(os.cpu_count())`). torch and timm are the
project's `convert` extra (`pip install -e .[convert]`, the pins in setup.py), so they share
our environment; where they cannot (another torch, a machine without the wheel), make a
separate one: `python -m venv /tmp/timm-env && /tmp/timm-env/bin/pip install -e .[convert]`
and run this script with that interpreter. Neither is a CI dependency of the benchmarks.
Prints each median, images/s and the ratio ours / timm in images/s (> 1: we are faster), and
both sides' model FLOP/s against the machine's matmul peak, measured in the same run (the
fastest [2048, 2048] float32 matmul of jax, numpy's BLAS and torch): what a target ratio would
ask of the hardware.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# torch imports triton lazily, and triton's LLVM loaded after TensorFlow's (which effnetv2_jax's
# data code imports) segfaults; on the CPU triton is never used, so it is made unimportable
# (as tests/convert/conftest.py does).
sys.modules.setdefault("triton", None)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from convs import _interleaved_medians  # noqa: E402
from step_harness import (OPTIMIZERS, RESULTS, alternate, bar_chart, compile_eval,  # noqa: E402
                     compile_train_step, eval_runner, load1, load_line, matmul_peak, median,
                     train_runner, write_csv)

from effnetv2_jax import huge_pages  # noqa: E402

# Issue #9's targets on the CPU, ours / timm in images/s.
TARGETS = {"train": 1.25, "eval": 1.5}


def torch_matmul_peak(device: str = "cpu", size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of torch's float32 [size, size] matmul on `device` (median of `repeats`), beside
    `step_harness.matmul_peak`'s: timm's convolutions run on torch's GEMMs."""
    import torch

    a = torch.randn(size, size, device=device)
    case = {"torch": (lambda a: (a @ a).sum().item(), (a,))}  # .item() waits for the device
    return 2 * size ** 3 / _interleaved_medians(case, repeats)["torch"]


def timm_runners(*, train_size: int, eval_size: int, batch: int, optimizer: str,
                 channels_last: bool, device: str = "cpu", dtype: str = "float32",
                 seed: int = 0):
    """(train closure, eval closure, torch version, timm version) for timm's
    tf_efficientnetv2_s; each closure returns seconds. bfloat16 runs under torch.autocast
    (float32 weights, as our mixed precision)."""
    import contextlib
    import time

    import timm
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(seed)
    model = timm.create_model("tf_efficientnetv2_s", pretrained=False, num_classes=1000)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt)
    autocast = (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)) \
        if dtype == "bfloat16" else contextlib.nullcontext
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        opt = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, eps=1e-3, momentum=0.9)
    rng = np.random.default_rng(seed)
    train_x = torch.from_numpy(rng.standard_normal((batch, 3, train_size, train_size),
                                                   np.float32)).to(device, memory_format=fmt)
    labels = torch.from_numpy(rng.integers(0, 1000, batch)).to(device)
    eval_x = torch.from_numpy(rng.standard_normal((batch, 3, eval_size, eval_size),
                                                  np.float32)).to(device, memory_format=fmt)

    def train() -> float:
        model.train()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(train_x).float(), labels)
        loss.backward()
        opt.step()
        value = loss.item()
        seconds = time.perf_counter() - start
        if not np.isfinite(value):
            raise FloatingPointError(f"timm: non-finite loss {value}")
        return seconds

    def evaluate() -> float:
        model.eval()
        start = time.perf_counter()
        with torch.inference_mode(), autocast():
            model(eval_x).sum().item()  # .item() waits for the device
        return time.perf_counter() - start

    return train, evaluate, torch.__version__, timm.__version__


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-size", type=int, default=128, help="pixels")
    p.add_argument("--eval-size", type=int, default=224, help="pixels")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    p.add_argument("--conv-impl", default="cpu", help="ours: xla | cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype (bfloat16: ours mixed precision, timm autocast)")
    p.add_argument("--device", default="cpu", help="timm's torch device: cpu, cuda")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each, alternating")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, batch 4, 2 repeats")
    p.add_argument("--out", default=str(RESULTS), help="output folder")
    p.add_argument("--name", default="vs_timm", help="CSV / PNG file stem")
    args = p.parse_args(argv)
    if args.quick:
        args.train_size, args.eval_size, args.batch, args.repeats = 64, 64, 4, 2

    timm_train, timm_eval, torch_version, timm_version = timm_runners(
        train_size=args.train_size, eval_size=args.eval_size, batch=args.batch,
        optimizer=args.optimizer, channels_last=args.channels_last, device=args.device,
        dtype=args.dtype)
    print(f"jax {jax.__version__} ({args.conv_impl} convs); torch {torch_version}, timm "
          f"{timm_version} ({'channels_last' if args.channels_last else 'NCHW'}); "
          f"{os.cpu_count()} CPUs; {load_line()}", flush=True)
    workloads = {}
    if not args.skip_train:
        c, state, batch = compile_train_step(
            "efficientnetv2-s", image_size=args.train_size, batch=args.batch,
            dtype=args.dtype, conv_impl=args.conv_impl, optimizer=args.optimizer)
        print(f"ours train step: compiled in {c.trace_s + c.compile_s:.1f} s", flush=True)
        workloads["train"] = (f"train {args.train_size} px b{args.batch} {args.optimizer}",
                              train_runner(c, state, batch), timm_train, c.flops_per_image)
    if not args.skip_eval:
        c, variables, images = compile_eval(
            "efficientnetv2-s", image_size=args.eval_size, batch=args.batch,
            dtype=args.dtype, conv_impl=args.conv_impl)
        print(f"ours eval forward: compiled in {c.trace_s + c.compile_s:.1f} s", flush=True)
        workloads["eval"] = (f"eval {args.eval_size} px b{args.batch}",
                             eval_runner(c, variables, images), timm_eval, c.flops_per_image)

    runners = {}
    for name, (_, ours, theirs, _) in workloads.items():
        runners[f"{name}/ours"], runners[f"{name}/timm"] = ours, theirs
    times = alternate(runners, args.repeats)
    peak = max(matmul_peak(args.dtype), torch_matmul_peak(args.device))
    rows = []
    print(f"{'workload':32s} {'ours s':>7s} {'timm s':>7s} {'ours img/s':>10s} "
          f"{'timm img/s':>10s} {'ratio':>6s} {'ours of':>8s} {'timm of':>8s}")
    for name, (label, _, _, flops_per_image) in workloads.items():
        ours, theirs = median(times[f"{name}/ours"]), median(times[f"{name}/timm"])
        rows.append({"workload": label, "ours_s": ours, "timm_s": theirs,
                     "ours_images_per_s": args.batch / ours,
                     "timm_images_per_s": args.batch / theirs, "ratio": theirs / ours,
                     "ours_of_peak": flops_per_image * args.batch / ours / peak,
                     "timm_of_peak": flops_per_image * args.batch / theirs / peak,
                     "matmul_peak_gflops": peak / 1e9,
                     "ours_times": " ".join(f"{t:.3f}" for t in times[f"{name}/ours"]),
                     "timm_times": " ".join(f"{t:.3f}" for t in times[f"{name}/timm"]),
                     "conv_impl": args.conv_impl, "dtype": args.dtype,
                     "backend": jax.default_backend(), "torch_device": args.device,
                     "channels_last": args.channels_last,
                     "torch": torch_version, "timm": timm_version, "load1": load1()})
        r = rows[-1]
        print(f"{label:32s} {ours:7.3f} {theirs:7.3f} {r['ours_images_per_s']:10.2f} "
              f"{r['timm_images_per_s']:10.2f} {r['ratio']:5.2f}x {r['ours_of_peak']:8.0%} "
              f"{r['timm_of_peak']:8.0%}")
    print(f"of peak: model FLOP/s (2 x multiply-adds, x3 for a train step) over the fastest "
          f"matmul measured here (jax, numpy, torch): {peak / 1e9:.1f} GFLOP/s")
    for r, target in zip(rows, [TARGETS.get(name) for name in workloads]):
        if target:
            print(f"{r['workload']}: {target:.2f}x timm would need "
                  f"{target * r['timm_of_peak']:.0%} of that peak")
    print(load_line(), flush=True)
    out = Path(args.out)
    write_csv(rows, out / f"{args.name}.csv")
    bar_chart(out / f"{args.name}.png", [r["workload"] for r in rows],
              {"effnetv2_jax": [r["ours_images_per_s"] for r in rows],
               "timm": [r["timm_images_per_s"] for r in rows]},
              ylabel="images / s",
              title=f"EfficientNetV2-S, {args.dtype}, {jax.default_backend()} / torch "
                    f"{args.device}: effnetv2_jax vs timm",
              annotate=[f"{r['ratio']:.2f}x" for r in rows])
    return rows


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()  # as effnetv2_jax.main does
    main()
