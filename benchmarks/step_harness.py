"""What the whole-model benchmarks share: the measured matmul peak, an AOT-compiled train step
and eval forward with their compile time, FLOPs and memory, load-aware timing, CSV and charts.

Imported by train_step.py, vs_timm.py, progressive.py, compile.py and memory.py (run them as
`python benchmarks/NAME.py`, which puts this folder on sys.path). Layer-level helpers live in
convs.py and are reused from there.
"""

from __future__ import annotations

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
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convs import _interleaved_medians  # noqa: E402

from effnetv2_jax.models.counting import count_flops  # noqa: E402
from effnetv2_jax.models.factory import abstract_model, create_model  # noqa: E402
from effnetv2_jax.train import exported_steps  # noqa: E402
from effnetv2_jax.train.state import merge_model, split_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OPTIMIZERS = ("sgd", "rmsprop")


def load_line() -> str:
    """The 1/5/15-minute load averages: printed with every table, since the 2 cores are shared
    and another process's load skews every absolute number (ratios of alternated runs less)."""
    try:
        return "load average (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average: unavailable"


def load1() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def matmul_peaks(dtype="float32", size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured FLOP/s of a [size, size] @ [size, size] matmul (median of `repeats`): jax's
    jitted one and, on the CPU backend in float32, numpy's BLAS, one after the other (not
    alternating: OpenBLAS's threads spin after each call and would slow XLA's). XLA:CPU's
    own GEMM (as the entry points configure it, `cpu/xla_flags.py`) reaches ~134 GFLOP/s on this
    2-core machine where OpenBLAS (and torch) reach ~180, so the machine's ceiling is the
    higher of the two."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), dtype)
    fn = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    cases = {"jax": (fn, (a, a))}
    if jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.float32:
        host = np.asarray(a)
        cases["numpy"] = (np.matmul, (host, host))
    return {name: 2 * size ** 3 / _interleaved_medians({name: case}, repeats)[name]
            for name, case in cases.items()}


def matmul_peak(dtype="float32", size: int = 2048, repeats: int = 5) -> float:
    """The higher of `matmul_peaks`: the machine's practical ceiling, measured in the same run
    as the model it is compared to."""
    return max(matmul_peaks(dtype, size, repeats).values())


def make_optimizer(name: str, learning_rate: float = 0.01) -> optax.GradientTransformation:
    """"sgd": momentum 0.9; "rmsprop": TF1-style (decay 0.9, eps 1e-3, momentum 0.9), the
    recipe's optimizer. timm's side uses the torch equivalents (vs_timm.py)."""
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=0.9)
    if name == "rmsprop":
        return optax.rmsprop(learning_rate, decay=0.9, eps=1e-3, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r} (valid: {', '.join(OPTIMIZERS)})")


def memory_summary(compiled) -> dict[str, float]:
    """MiB of an executable from XLA's buffer assignment: arguments, outputs, temporaries and
    the peak (arguments + outputs + temporaries - donated aliases). NaN where the backend
    gives no analysis."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {k: float("nan") for k in ("args_mib", "out_mib", "temp_mib", "peak_mib")}
    mib = 2.0 ** 20
    peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    return {"args_mib": analysis.argument_size_in_bytes / mib,
            "out_mib": analysis.output_size_in_bytes / mib,
            "temp_mib": analysis.temp_size_in_bytes / mib, "peak_mib": peak / mib}


@dataclasses.dataclass
class Compiled:
    """An AOT-compiled step: `fn`, the seconds spent tracing + lowering and compiling, the
    model FLOPs of one image (2 x multiply-adds; x3 for a train step) and the memory."""

    fn: object
    trace_s: float
    compile_s: float
    flops_per_image: float
    memory: dict[str, float]


def _aot(fn, args, donate: tuple[int, ...] = ()) -> tuple[object, float, float]:
    start = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
    traced = time.perf_counter()
    compiled = lowered.compile()
    return compiled, traced - start, time.perf_counter() - traced


def _aot_exported(fn, args, cache_dir: str) -> tuple[object, float, float]:
    """As `_aot`, through the training loop's stored traces (train/exported_steps.py): the
    time is all reported as compile seconds (trace NaN), since a stored trace skips tracing."""
    start = time.perf_counter()
    compiled, _ = exported_steps.compile_step(fn, args, name="bench_train", description={},
                                              out_sharding=None, donate_first=True,
                                              cache_dir=cache_dir)
    return compiled, float("nan"), time.perf_counter() - start


def _model_and_state(variant, *, abstract, **model_kwargs):
    make = abstract_model if abstract else create_model
    model = make(variant, **model_kwargs)
    return split_model(model)


def compile_train_step(variant: str = "efficientnetv2-s", *, image_size: int, batch: int,
                       dtype: str = "float32", conv_impl: str = "cpu", optimizer: str = "sgd",
                       remat: bool = False, num_classes: int = 1000, abstract: bool = False,
                       seed: int = 0, exported_cache_dir: str | None = None):
    """An SGD/RMSProp train step (train-mode forward with BN batch statistics, dropout and
    drop-path; softmax cross-entropy; backward; optimizer update), the state donated.

    Returns `(Compiled, state, batch)`, where `compiled.fn(state, images, labels, key) ->
    (state, loss)`; state and batch are concrete arrays unless `abstract` (then
    ShapeDtypeStructs: compile and analyse only, nothing allocated). images: [batch,
    image_size, image_size, 3] in `dtype`, labels int32 [batch]. With `exported_cache_dir` the
    step is compiled as the training loop compiles it, through a stored trace in that folder.
    """
    kwargs = dict(num_classes=num_classes, dtype=dtype, conv_impl=conv_impl, seed=seed)
    if remat:
        kwargs["remat"] = True
    graphdef, params, batch_stats = _model_and_state(variant, abstract=abstract, **kwargs)
    tx = make_optimizer(optimizer)
    opt_state = jax.eval_shape(tx.init, params) if abstract else tx.init(params)

    def step(state, images, labels, key):
        params, batch_stats, opt_state = state

        def loss_fn(params):
            model = merge_model(graphdef, params, batch_stats)
            logits = model(images, train=True, key=key)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, split_model(model)[2]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_stats, opt_state), loss

    image_dtype = jnp.dtype(dtype)
    shapes = ((batch, image_size, image_size, 3), image_dtype), ((batch,), jnp.int32)
    if abstract:
        images, labels = (jax.ShapeDtypeStruct(s, d) for s, d in shapes)
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    else:
        rng = np.random.default_rng(seed)
        images = jnp.asarray(rng.standard_normal(shapes[0][0]), image_dtype)
        labels = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
        key = jax.random.PRNGKey(seed)
    state = (params, batch_stats, opt_state)
    if exported_cache_dir:
        fn, trace_s, compile_s = _aot_exported(step, (state, images, labels, key),
                                               exported_cache_dir)
    else:
        fn, trace_s, compile_s = _aot(step, (state, images, labels, key), donate=(0,))
    flops = 3 * 2 * count_flops(variant, image_size, num_classes=num_classes)
    return Compiled(fn, trace_s, compile_s, flops, memory_summary(fn)), state, (images, labels)


def compile_eval(variant: str = "efficientnetv2-s", *, image_size: int, batch: int,
                 dtype: str = "float32", conv_impl: str = "cpu", num_classes: int = 1000,
                 seed: int = 0):
    """The inference forward `fn(params, batch_stats, images) -> logits` [batch, classes]
    (BN running statistics). Returns `(Compiled, (params, batch_stats), images)`."""
    graphdef, params, batch_stats = _model_and_state(
        variant, abstract=False, num_classes=num_classes, dtype=dtype, conv_impl=conv_impl,
        seed=seed)

    def forward(params, batch_stats, images):
        return merge_model(graphdef, params, batch_stats)(images)

    images = jnp.asarray(np.random.default_rng(seed).standard_normal(
        (batch, image_size, image_size, 3)), jnp.dtype(dtype))
    fn, trace_s, compile_s = _aot(forward, (params, batch_stats, images))
    flops = 2 * count_flops(variant, image_size, num_classes=num_classes)
    return Compiled(fn, trace_s, compile_s, flops, memory_summary(fn)), (params, batch_stats), images


def train_runner(compiled: Compiled, state, batch, seed: int = 0):
    """A closure that runs one train step, carrying the (donated) state, and returns the
    seconds it took; the loss is checked to be finite every call."""
    images, labels = batch
    carry = {"state": state, "step": 0}
    base = jax.random.PRNGKey(seed)

    def run() -> float:
        key = jax.random.fold_in(base, carry["step"])
        start = time.perf_counter()
        carry["state"], loss = compiled.fn(carry["state"], images, labels, key)
        loss = float(loss)  # waits for the step
        seconds = time.perf_counter() - start
        carry["step"] += 1
        if not np.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} at benchmark step {carry['step']}")
        return seconds

    return run


def eval_runner(compiled: Compiled, variables, images):
    def run() -> float:
        start = time.perf_counter()
        jax.block_until_ready(compiled.fn(*variables, images))
        return time.perf_counter() - start

    return run


def alternate(runners: dict[str, object], repeats: int, warmup: int = 1,
              settle: int = 0) -> dict[str, list]:
    """Runs each closure `warmup` times, then `repeats` rounds in turn (a, b, a, b, ...), so
    every contestant sees the same background load. In each round a contestant first runs
    `settle` untimed times, so that the timed run follows its own, as steps do in training (the
    first step after another process's big step pays for re-faulting the memory that one freed:
    up to 1 s of a 2 s V2-S step on this VM). Returns {name: [seconds, ...]}."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            for _ in range(settle):
                run()
            times[name].append(run())
    return times


def median(values) -> float:
    return statistics.median(values)


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def bar_chart(path: Path, labels, series: dict[str, list[float]], *, ylabel: str, title: str,
              annotate: list[str] | None = None, hline: tuple[float, str] | None = None) -> None:
    """Grouped bars, one group per label, one bar per series; `annotate` writes a note over
    each group, `hline` draws (value, label) across the chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) + 3), 4.5))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    if annotate:
        tops = np.nanmax(np.array(list(series.values()), dtype=float), axis=0)
        for xi, top, note in zip(x, tops, annotate):
            ax.annotate(note, (xi, top), ha="center", va="bottom", fontsize=8)
    if hline:
        ax.axhline(hline[0], color="gray", linestyle="--", linewidth=1)
        ax.annotate(hline[1], (x[-1] + 0.4, hline[0]), ha="right", va="bottom", fontsize=8)
    ax.set_xticks(x, labels, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title + "\n" + load_line(), fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
