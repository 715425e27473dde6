"""Benchmark the convolutions of the "xla" and "cpu" ops (`effnetv2_jax.models.ops`).

For EfficientNetV2-S layer shapes (batch 32, 128 px training resolution) it times, per
impl, the forward and the forward+backward (output, d/dx and d/dkernel for a random
cotangent) and reports GFLOP/s (FLOPs = 2 * MACs; forward+backward = 3x the forward).
Optionally it also times a whole EfficientNetV2-S SGD train step with each impl. On one
device, "cpu" runs the 3x3 stride-1 convs with 48 and 64 input channels by Winograd
(`cpu/winograd.py`); the last row is stage 2's such conv at 224 px (eval resolution).

    python benchmarks/convs.py                 # full run, results in benchmarks/results/
    python benchmarks/convs.py --quick         # smoke run: small batch, few repeats
    python benchmarks/convs.py --skip-train-step

Writes `convs.csv` (one row per layer and impl, plus train-step rows) and `convs.png`.
Timings: median of `--repeats` runs after one warm-up run, with `jax.block_until_ready`;
the runs of the two impls alternate so that both see the same background load. Other
load still skews absolute numbers; the `load1` column records the 1-minute load average
after each layer.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effnetv2_jax import cpu  # noqa: E402
from effnetv2_jax.models.ops import ops_for  # noqa: E402

IMPLS = ("xla", "cpu")


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "depthwise" | "conv"
    height: int
    width: int
    cin: int
    cout: int
    kernel: int
    stride: int

    def shapes(self, batch):
        x = (batch, self.height, self.width, self.cin)
        if self.kind == "depthwise":
            w = (self.kernel, self.kernel, 1, self.cin)
        else:
            w = (self.kernel, self.kernel, self.cin, self.cout)
        return x, w

    def out_hw(self):
        return -(-self.height // self.stride), -(-self.width // self.stride)

    def flops(self, batch):
        """Forward FLOPs, 2 * multiply-accumulates."""
        oh, ow = self.out_hw()
        per_output = self.kernel * self.kernel * (1 if self.kind == "depthwise" else self.cin)
        return 2 * batch * oh * ow * self.cout * per_output

    def label(self, batch):
        s = f" s{self.stride}" if self.stride > 1 else ""
        k = f"{self.kernel}x{self.kernel}"
        if self.kind == "depthwise":
            return f"dw {k}{s} [{batch},{self.height},{self.width},{self.cin}]"
        return f"conv {k}{s} [{batch},{self.height},{self.width},{self.cin}]->{self.cout}"


def _dw(h, c, s, k=3, note=""):
    return Layer(f"dw{k}_{h}x{h}x{c}_s{s}{note}", "depthwise", h, h, c, c, k, s)


def _conv(h, cin, cout, k, s, note=""):
    return Layer(f"conv{k}_{h}x{h}x{cin}_{cout}_s{s}{note}", "conv", h, h, cin, cout, k, s)


# EfficientNetV2-S at 128 px (stem -> 64x64; fused stages at 64/32/16, MBConv at 16/8/4).
# The first three depthwise shapes are the (larger than V2-S's own at 128 px).
LAYERS = (
    _dw(32, 256, 1), _dw(16, 512, 1), _dw(32, 256, 2),
    _dw(16, 256, 2, note="_stage4"), _dw(8, 768, 1, note="_stage5"), _dw(8, 960, 2, note="_stage6"),
    _conv(128, 3, 24, 3, 2, note="_stem"), _conv(64, 24, 24, 3, 1), _conv(64, 24, 96, 3, 2),
    _conv(32, 48, 192, 3, 1), _conv(32, 48, 192, 3, 2), _conv(16, 64, 256, 3, 1),
    _conv(16, 128, 512, 1, 1), _conv(32, 192, 48, 1, 1), _conv(16, 256, 64, 1, 1),
    _conv(8, 960, 160, 1, 1), _conv(4, 256, 1280, 1, 1, note="_head"),
    _conv(56, 48, 192, 3, 1, note="_224px"),
)
QUICK_LAYERS = (LAYERS[0], LAYERS[2], LAYERS[7], LAYERS[8], LAYERS[12])


def _load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _time_once(fn, args):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def _interleaved_medians(cases, repeats):
    """Median seconds per case; one warm-up (compile) run each, then the timed runs
    alternate between cases so that both impls see the same background load."""
    for fn, args in cases.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, args) in cases.items():
            times[name].append(_time_once(fn, args))
    return {name: statistics.median(t) for name, t in times.items()}


def make_fns(layer, impl):
    ops = ops_for(impl)
    op = ops.depthwise_conv if layer.kind == "depthwise" else ops.conv

    def forward(x, w):
        return op(x, w, layer.stride)

    def forward_backward(x, w, dy):
        y, vjp = jax.vjp(forward, x, w)
        return y, vjp(dy)

    return jax.jit(forward), jax.jit(forward_backward)


def bench_layer(layer, batch, repeats, impls=IMPLS, seed=0):
    """{impl: {fwd_ms, fwd_bwd_ms, fwd_gflops, fwd_bwd_gflops}} for one layer."""
    xs, ws = layer.shapes(batch)
    kx, kw, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, xs, jnp.float32)
    w = jax.random.normal(kw, ws, jnp.float32) / np.sqrt(np.prod(ws[:3]))
    dy = jax.random.normal(ky, (batch, *layer.out_hw(), layer.cout), jnp.float32)
    cases = {}
    for impl in impls:
        fwd, fwd_bwd = make_fns(layer, impl)
        cases[impl, "fwd"] = (fwd, (x, w))
        cases[impl, "fwd_bwd"] = (fwd_bwd, (x, w, dy))
    t = _interleaved_medians(cases, repeats)
    flops = layer.flops(batch)
    return {impl: {"fwd_ms": 1e3 * t[impl, "fwd"], "fwd_bwd_ms": 1e3 * t[impl, "fwd_bwd"],
                   "fwd_gflops": flops / t[impl, "fwd"] / 1e9,
                   "fwd_bwd_gflops": 3 * flops / t[impl, "fwd_bwd"] / 1e9}
            for impl in impls}


def _train_step_runner(conv_impl, *, batch=32, resolution=128, num_classes=1000,
                       variant="efficientnetv2-s", learning_rate=0.01, seed=0):
    """A closure that runs one SGD train step (carrying the state) and returns
    ``(seconds, loss)``; its first call includes tracing and compilation."""
    import optax
    from flax import nnx

    from effnetv2_jax import create_model

    model = create_model(variant, num_classes=num_classes, conv_impl=conv_impl)
    graphdef, state = nnx.split(model)
    tx = optax.sgd(learning_rate)
    opt_state = tx.init(nnx.state(model, nnx.Param))
    del model

    @jax.jit
    def train_step(state, opt_state, images, labels, key):
        m = nnx.merge(graphdef, state)

        def loss_fn(m):
            logits = m(images, train=True, key=key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(m)
        params = nnx.state(m, nnx.Param)
        updates, opt_state = tx.update(grads, opt_state, params)
        nnx.update(m, optax.apply_updates(params, updates))
        return nnx.state(m), opt_state, loss

    ki, kl, kd = jax.random.split(jax.random.PRNGKey(seed), 3)
    images = jax.random.normal(ki, (batch, resolution, resolution, 3), jnp.float32)
    labels = jax.random.randint(kl, (batch,), 0, num_classes)
    carry = {"state": state, "opt_state": opt_state, "step": 0}

    def run():
        key = jax.random.fold_in(kd, carry["step"])
        t0 = time.perf_counter()
        state, opt_state, loss = jax.block_until_ready(
            train_step(carry["state"], carry["opt_state"], images, labels, key))
        seconds = time.perf_counter() - t0
        carry.update(state=state, opt_state=opt_state, step=carry["step"] + 1)
        if not np.isfinite(float(loss)):
            raise FloatingPointError(f"non-finite loss {float(loss)} with conv_impl={conv_impl}")
        return seconds, float(loss)

    return run


def time_train_step(conv_impl, *, batch=32, resolution=128, num_classes=1000, steps=5,
                    variant="efficientnetv2-s", learning_rate=0.01, seed=0):
    """Time an EfficientNetV2 SGD train step (float32, softmax cross-entropy).

    ``conv_impl`` is passed to ``effnetv2_jax.create_model``. Returns a dict with
    ``compile_s`` (first call: trace + compile + one step), ``step_s`` (median of
    ``steps`` further calls) and the last ``loss``.
    """
    run = _train_step_runner(conv_impl, batch=batch, resolution=resolution,
                             num_classes=num_classes, variant=variant,
                             learning_rate=learning_rate, seed=seed)
    compile_s, loss = run()
    times = []
    for _ in range(steps):
        seconds, loss = run()
        times.append(seconds)
    return {"compile_s": compile_s, "step_s": statistics.median(times), "loss": loss}


def time_train_steps_interleaved(impls=IMPLS, *, steps=5, **kwargs):
    """Like :func:`time_train_step` for several impls, alternating their timed steps so
    that each sees the same background load. Returns ``{impl: result dict}``."""
    runners = {impl: _train_step_runner(impl, **kwargs) for impl in impls}
    results = {}
    for impl, run in runners.items():
        compile_s, loss = run()
        results[impl] = {"compile_s": compile_s, "times": [], "loss": loss}
    for _ in range(steps):
        for impl, run in runners.items():
            seconds, results[impl]["loss"] = run()
            results[impl]["times"].append(seconds)
    return {impl: {"compile_s": r["compile_s"], "step_s": statistics.median(r["times"]),
                   "loss": r["loss"]} for impl, r in results.items()}


def _plot(rows, train_rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["layer"] for r in rows if r["impl"] == "xla"]
    by = {(r["layer"], r["impl"]): r for r in rows}
    n_axes = 3 if train_rows else 2
    fig, axes = plt.subplots(n_axes, 1, figsize=(max(10, 0.7 * len(labels) + 4), 4 * n_axes + 2))
    x = np.arange(len(labels))
    for ax, key, title in ((axes[0], "fwd_gflops", "forward"),
                           (axes[1], "fwd_bwd_gflops", "forward + backward")):
        for off, impl in ((-0.2, "xla"), (0.2, "cpu")):
            ax.bar(x + off, [by[(lab, impl)][key] for lab in labels], 0.4, label=impl)
        ax.set_yscale("log")
        ax.set_ylabel("GFLOP/s (log)")
        ax.set_title(f"{title}, GFLOP/s (bar label: cpu / xla)")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        for i, lab in enumerate(labels):
            ratio = by[(lab, "cpu")][key] / by[(lab, "xla")][key]
            ax.annotate(f"{ratio:.1f}x", (i + 0.2, by[(lab, "cpu")][key]), ha="center",
                        va="bottom", fontsize=7)
        ax.legend()
    if train_rows:
        ax = axes[2]
        impls = [r["impl"] for r in train_rows]
        ax.bar(impls, [r["step_s"] for r in train_rows], color=["C0", "C1"][:len(impls)])
        ax.set_ylabel("seconds / step")
        ax.set_title(train_rows[0]["layer"] + " (median step time)")
        for i, r in enumerate(train_rows):
            ax.annotate(f"{r['step_s']:.2f} s (compile {r['compile_s']:.0f} s)", (i, r["step_s"]),
                        ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 5 layers at batch 4, 2 repeats; train step at 64 px, batch 2")
    p.add_argument("--out", default="benchmarks/results", help="output directory")
    p.add_argument("--batch", type=int, default=None, help="layer batch (default 32; quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; quick 2)")
    p.add_argument("--only", default=None, help="comma-separated substrings of layer names")
    p.add_argument("--skip-train-step", action="store_true", help="skip the whole-model step")
    p.add_argument("--train-batch", type=int, default=None)
    p.add_argument("--train-resolution", type=int, default=None)
    p.add_argument("--train-steps", type=int, default=None)
    args = p.parse_args(argv)

    batch = args.batch or (4 if args.quick else 32)
    repeats = args.repeats or (2 if args.quick else 5)
    layers = QUICK_LAYERS if args.quick else LAYERS
    if args.only:
        keys = args.only.split(",")
        layers = [l for l in layers if any(k in l.name for k in keys)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
          f"batch {batch}, median of {repeats}")

    rows = []
    head = (f"{'layer':44s} {'xla fwd':>8s} {'cpu fwd':>8s} {'ratio':>6s}  "
            f"{'xla f+b':>8s} {'cpu f+b':>8s} {'ratio':>6s}   (GFLOP/s)  load")
    print(head)
    for layer in layers:
        res = bench_layer(layer, batch, repeats)
        load = _load()
        for impl in IMPLS:
            rows.append({"layer": layer.label(batch), "name": layer.name, "impl": impl,
                         "gflop_fwd": layer.flops(batch) / 1e9, **res[impl], "load1": load})
        rf = res["cpu"]["fwd_gflops"] / res["xla"]["fwd_gflops"]
        rb = res["cpu"]["fwd_bwd_gflops"] / res["xla"]["fwd_bwd_gflops"]
        print(f"{layer.label(batch):44s} {res['xla']['fwd_gflops']:8.2f} "
              f"{res['cpu']['fwd_gflops']:8.2f} {rf:5.1f}x  {res['xla']['fwd_bwd_gflops']:8.2f} "
              f"{res['cpu']['fwd_bwd_gflops']:8.2f} {rb:5.1f}x   {load:9.1f}", flush=True)

    train_rows = []
    if not args.skip_train_step:
        try:
            from effnetv2_jax import create_model  # noqa: F401
        except ImportError as e:
            print(f"train step skipped: effnetv2_jax.create_model unavailable ({e})")
        else:
            tb = args.train_batch or (2 if args.quick else 32)
            tr = args.train_resolution or (64 if args.quick else 128)
            ts = args.train_steps or (2 if args.quick else 5)
            label = f"EfficientNetV2-S train step, batch {tb}, {tr} px"
            res = time_train_steps_interleaved(IMPLS, steps=ts, batch=tb, resolution=tr)
            for impl in IMPLS:
                r = res[impl]
                train_rows.append({"layer": label, "name": "train_step", "impl": impl,
                                   **r, "load1": _load()})
                print(f"{label} [{impl}]: compile {r['compile_s']:.1f} s, "
                      f"step {r['step_s']:.3f} s (median of {ts}), loss {r['loss']:.3f}")
            print(f"train step speed-up cpu vs xla: "
                  f"{res['xla']['step_s'] / res['cpu']['step_s']:.2f}x, compile time ratio "
                  f"{res['cpu']['compile_s'] / res['xla']['compile_s']:.2f}x", flush=True)

    fields = ["layer", "name", "impl", "gflop_fwd", "fwd_ms", "fwd_bwd_ms", "fwd_gflops",
              "fwd_bwd_gflops", "compile_s", "step_s", "loss", "load1"]
    with open(out / "convs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for r in rows + train_rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in r.items()})
    if rows:
        _plot(rows, train_rows, out / "convs.png")
    print(f"wrote {out / 'convs.csv'} and {out / 'convs.png'}")


if __name__ == "__main__":
    cpu.configure_process()  # XLA:CPU flags and allocator, as effnetv2_jax.main
    main()
