"""effnetv2_jax against timm's `tf_efficientnetv2_s` (PyTorch) on the same machine, in one run.

Two workloads, each timed for both libraries with the runs alternating (ours, timm, ours, ...)
so that both see the same background load. timm runs in a process of its own, as its users run
it, driven over a pipe (in one process, each library's freed memory and idle threads slowed the
other's next step: ours by up to 1 s). Where this script restarted with another allocator, as
`effnetv2_jax.main` does (`effnetv2_jax/cpu/allocator.py`: mimalloc, or glibc's huge pages), timm
runs twice: "timm" with glibc's defaults, as shipped, and "timm_mimalloc" (or "timm_huge_pages")
with the same allocator as ours, so that the comparison with equal allocators is printed beside
it. Each timed run follows an untimed one of the same library
(`--settle`, default 1), as steps follow each other in training:
  * train step: V2-S, 128 px, batch 32, float32, SGD (momentum 0.9) or RMSProp (decay 0.9,
    eps 1e-3, momentum 0.9): forward in train mode, softmax cross-entropy, backward, update;
  * eval forward: V2-S, 224 px, batch 32, float32, inference mode.

    python benchmarks/vs_timm.py                    # results/vs_timm.csv + .png
    python benchmarks/vs_timm.py --optimizer rmsprop --repeats 7
    python benchmarks/vs_timm.py --quick            # smoke run: 64 px, batch 4

timm runs channels_last (faster for its depthwise and 1x1 convs on CPU; `--no-channels-last`
to compare) with all cores (`torch.set_num_threads(os.cpu_count())`). torch and timm are the
project's `convert` extra (`pip install -c requirements/lock.txt -e .[convert]`), so they share
our environment; where they cannot (another torch, a machine without the wheel), make a
separate one: `python -m venv /tmp/timm-env && /tmp/timm-env/bin/pip install -e .[convert]`
and run this script with that interpreter. Neither is a CI dependency of the benchmarks.
Prints each median, images/s and the ratio ours / timm in images/s (> 1: we are faster), and
both sides' model FLOP/s against the machine's matmul peak, measured in the same run (the
fastest [2048, 2048] float32 matmul of jax, numpy's BLAS and torch): what a target ratio would
ask of the hardware. Model FLOPs count every conv as a direct conv; our cpu impl computes the
3x3 stride-1 convs of the fused stages by Winograd (`effnetv2_jax/cpu/winograd.py`) with
4x fewer multiply-adds in their GEMMs, so our "of peak" can near or pass 100% and the
"would need" line is no longer a bound for us.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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

from effnetv2_jax import cpu  # noqa: E402
from effnetv2_jax.cpu import allocator  # noqa: E402

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


class TimmProcess:
    """timm's side in a Python process of its own, as its users run it (and so that neither
    library's threads or freed memory slow the other's next step): started with `env`, it builds
    `timm_runners` and then runs one workload per line it reads ("train", "eval", "peak"),
    answering with the seconds it measured (or the torch matmul FLOP/s)."""

    def __init__(self, worker_args: list[str], env: dict[str, str]):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--timm-worker", *worker_args], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.versions = json.loads(self._read())

    def _read(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the timm worker process ended (exit {self.process.wait()}); "
                               "its error is above")
        return line

    def ask(self, command: str) -> float:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return float(self._read())

    def runner(self, command: str):
        return lambda: self.ask(command)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def _serve_timm(args) -> None:
    """The `--timm-worker` side of `TimmProcess`."""
    train, evaluate, torch_version, timm_version = timm_runners(
        train_size=args.train_size, eval_size=args.eval_size, batch=args.batch,
        optimizer=args.optimizer, channels_last=args.channels_last, device=args.device,
        dtype=args.dtype)
    commands = {"train": train, "eval": evaluate,
                "peak": lambda: torch_matmul_peak(args.device)}
    print(json.dumps({"torch": torch_version, "timm": timm_version}), flush=True)
    for line in sys.stdin:
        print(commands[line.strip()](), flush=True)


def _timm_environments() -> dict[str, dict[str, str]]:
    """{column: environment} for the timm processes: "timm" with glibc's default malloc, as timm
    users run it; where this process runs with another allocator (`allocator.py`), also
    "timm_<allocator>" with the same one, so the comparison with equal allocators is printed
    too. The workers run this script, so neither restarts."""
    environments = {"timm": allocator.without_ours(dict(os.environ))}
    ours = allocator.running()
    if ours != "system":
        environments[f"timm_{ours.replace('-', '_')}"] = {**os.environ,
                                                           allocator.ENV: "system"}
    return environments


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
    p.add_argument("--settle", type=int, default=1,
                   help="untimed runs before each timed one, so it follows a run of its own "
                        "(0: strict alternation)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, batch 4, 2 repeats")
    p.add_argument("--out", default=str(RESULTS), help="output folder")
    p.add_argument("--name", default="vs_timm", help="CSV / PNG file stem")
    p.add_argument("--timm-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.train_size, args.eval_size, args.batch, args.repeats = 64, 64, 4, 2
    if args.timm_worker:
        return _serve_timm(args)

    worker_args = [f"--train-size={args.train_size}", f"--eval-size={args.eval_size}",
                   f"--batch={args.batch}", f"--optimizer={args.optimizer}",
                   f"--dtype={args.dtype}", f"--device={args.device}"]
    if not args.channels_last:
        worker_args.append("--no-channels-last")
    timm = {column: TimmProcess(worker_args, env)
            for column, env in _timm_environments().items()}
    try:
        return _compare(args, timm)
    finally:
        for process in timm.values():
            process.close()


def _compare(args, timm: dict[str, TimmProcess]) -> None:
    versions = next(iter(timm.values())).versions
    print(f"jax {jax.__version__} ({args.conv_impl} convs); torch {versions['torch']}, timm "
          f"{versions['timm']} ({'channels_last' if args.channels_last else 'NCHW'}), "
          f"in processes of their own: {', '.join(timm)}; {os.cpu_count()} CPUs; "
          f"{load_line()}", flush=True)
    workloads = {}
    if not args.skip_train:
        c, state, batch = compile_train_step(
            "efficientnetv2-s", image_size=args.train_size, batch=args.batch,
            dtype=args.dtype, conv_impl=args.conv_impl, optimizer=args.optimizer)
        print(f"ours train step: compiled in {c.trace_s + c.compile_s:.1f} s", flush=True)
        workloads["train"] = (f"train {args.train_size} px b{args.batch} {args.optimizer}",
                              train_runner(c, state, batch), c.flops_per_image)
    if not args.skip_eval:
        c, variables, images = compile_eval(
            "efficientnetv2-s", image_size=args.eval_size, batch=args.batch,
            dtype=args.dtype, conv_impl=args.conv_impl)
        print(f"ours eval forward: compiled in {c.trace_s + c.compile_s:.1f} s", flush=True)
        workloads["eval"] = (f"eval {args.eval_size} px b{args.batch}",
                             eval_runner(c, variables, images), c.flops_per_image)

    runners = {}
    for name, (_, ours, _) in workloads.items():
        runners[f"{name}/ours"] = ours
        for column, process in timm.items():
            runners[f"{name}/{column}"] = process.runner(name)
    times = alternate(runners, args.repeats, settle=args.settle)
    peak = max(matmul_peak(args.dtype), next(iter(timm.values())).ask("peak"))
    rows = []
    header = f"{'workload':32s} {'ours s':>7s} {'ours img/s':>10s} {'ours of':>8s}"
    for column in timm:
        header += f" | {column + ' s':>9s} {'img/s':>7s} {'of peak':>7s} {'ratio':>6s}"
    print(header)
    for name, (label, _, flops_per_image) in workloads.items():
        ours = median(times[f"{name}/ours"])
        r = {"workload": label, "ours_s": ours, "ours_images_per_s": args.batch / ours,
             "ours_of_peak": flops_per_image * args.batch / ours / peak,
             "ours_times": " ".join(f"{t:.3f}" for t in times[f"{name}/ours"])}
        line = f"{label:32s} {ours:7.3f} {r['ours_images_per_s']:10.2f} {r['ours_of_peak']:8.0%}"
        for column in timm:
            theirs = median(times[f"{name}/{column}"])
            r.update({f"{column}_s": theirs, f"{column}_images_per_s": args.batch / theirs,
                      f"{column}_of_peak": flops_per_image * args.batch / theirs / peak,
                      f"ratio_{column}": theirs / ours,
                      f"{column}_times": " ".join(f"{t:.3f}"
                                                  for t in times[f"{name}/{column}"])})
            line += (f" | {theirs:9.3f} {args.batch / theirs:7.2f} "
                     f"{r[f'{column}_of_peak']:7.0%} {theirs / ours:5.2f}x")
        r.update({"matmul_peak_gflops": peak / 1e9, "conv_impl": args.conv_impl,
                  "dtype": args.dtype, "backend": jax.default_backend(),
                  "torch_device": args.device, "channels_last": args.channels_last,
                  "torch": versions["torch"], "timm": versions["timm"], "load1": load1()})
        rows.append(r)
        print(line)
    print(f"ratio: ours / timm in images/s (> 1: we are faster). of peak: model FLOP/s "
          f"(2 x multiply-adds, x3 for a train step) over the fastest matmul measured here "
          f"(jax, numpy, torch): {peak / 1e9:.1f} GFLOP/s")
    for r, target in zip(rows, [TARGETS.get(name) for name in workloads]):
        if target:
            needs = ", ".join(f"{target * r[column + '_of_peak']:.0%} ({column})"
                              for column in timm)
            print(f"{r['workload']}: {target:.2f}x timm would need {needs} of that peak")
    print(load_line(), flush=True)
    out = Path(args.out)
    write_csv(rows, out / f"{args.name}.csv")
    series = {"effnetv2_jax": [r["ours_images_per_s"] for r in rows]}
    for column in timm:
        series[column] = [r[f"{column}_images_per_s"] for r in rows]
    bar_chart(out / f"{args.name}.png", [r["workload"] for r in rows], series,
              ylabel="images / s",
              title=f"EfficientNetV2-S, {args.dtype}, {jax.default_backend()} / torch "
                    f"{args.device}: effnetv2_jax vs timm",
              annotate=[" / ".join(f"{r['ratio_' + column]:.2f}x" for column in timm)
                        for r in rows])


if __name__ == "__main__":
    cpu.configure_process()  # XLA:CPU flags and allocator, as effnetv2_jax.main
    main()
