"""Plots the quickstart's training curves from its TensorBoard events into docs/.

    python -m effnetv2_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
    python benchmarks/plot_quickstart.py --workdir runs/quickstart   # -> docs/quickstart_curves.png
"""

import argparse
import glob
import os

from effnetv2_jax._extras import require

require("matplotlib", "plots", "plot_quickstart.py").use("Agg")
plt = require("matplotlib.pyplot", "plots", "plot_quickstart.py")
tf = require("tensorflow", "data", "plot_quickstart.py")
event_accumulator = require("tensorboard.backend.event_processing.event_accumulator", "data",
                            "plot_quickstart.py")


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every events file in `workdir` (CLU writes tensors)."""
    files = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents*")))
    if not files:
        raise SystemExit(f"no TensorBoard events in {workdir}: run the quickstart there first")
    series: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        accumulator = event_accumulator.EventAccumulator(
            path, size_guidance={event_accumulator.TENSORS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            for event in accumulator.Tensors(tag):
                value = tf.make_ndarray(event.tensor_proto)
                if value.ndim == 0:
                    series.setdefault(tag, []).append((event.step, float(value)))
    return {tag: sorted(points) for tag, points in series.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/quickstart")
    parser.add_argument("--out", default="docs/quickstart_curves.png")
    args = parser.parse_args()
    series = read_scalars(args.workdir)
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for tag, label in (("train/loss", "train loss"), ("eval/ema_loss", "eval loss (EMA)")):
        steps, values = zip(*series[tag])
        axes[0].plot(steps, values, "o-" if tag.startswith("eval") else "-", label=label)
    for tag, label in (("train/top1", "train top-1 (augmented)"),
                       ("eval/ema_top1", "eval top-1 (EMA)"), ("eval/raw_top1", "eval top-1 (raw)")):
        steps, values = zip(*series[tag])
        axes[1].plot(steps, values, "o-" if tag.startswith("eval") else "-", label=label)
    for tag, label in (("stage/image_size", "image size (px)"),
                       ("stage/randaug_magnitude", "RandAugment magnitude x 10")):
        steps, values = zip(*series[tag])
        scale = 10 if "randaug" in tag else 1
        axes[2].step(steps + (series["train/loss"][-1][0],),
                     [v * scale for v in values] + [values[-1] * scale], where="post", label=label)
    for axis, title in zip(axes, ("loss", "top-1 on held-out digits", "progressive stages")):
        axis.set_title(title)
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
        axis.legend()
    final = series["eval/ema_top1"][-1][1]
    figure.suptitle(f"Quickstart: small EfficientNetV2 on real digits, 2 CPU cores "
                    f"(final EMA top-1 {final:.1%})")
    figure.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out} (final eval/ema_top1 = {final:.4f})")


if __name__ == "__main__":
    main()
