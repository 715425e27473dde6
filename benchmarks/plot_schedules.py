"""Plots the progressive-learning schedules of V2-S, M and L, both presets, against the step.

    python benchmarks/plot_schedules.py [--out docs/progressive_schedules.png]

One column per quantity (image size, RandAugment magnitude, mixup alpha, dropout), one line per
model and preset (solid: google/automl code, dashed: paper Table 6), over the 107,336 steps of
the official 350-epoch run (official `main.py`, `hparams.py`; M and L share sizes, so L's line hides M's).
The values come from `effnetv2_jax.train.progressive`, the same functions the training loop uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from effnetv2_jax.train import progressive  # noqa: E402

TOTAL_STEPS = 107_336  # 350 * 1,256,144 // 4096 (official `datasets.py`)
QUANTITIES = (("image_size", "image size (px)"), ("randaug_magnitude", "RandAugment magnitude"),
              ("mixup_alpha", "mixup alpha"), ("dropout_rate", "dropout rate"))
COLORS = {"s": "tab:blue", "m": "tab:orange", "l": "tab:green"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"
                                             / "progressive_schedules.png"))
    out = Path(parser.parse_args().out)
    fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(18, 4.2))
    for model, color in COLORS.items():
        for preset, style in (("code", "-"), ("paper", "--")):
            stages = progressive.make_stages(
                progressive.preset(f"efficientnetv2-{model}", preset), 4, TOTAL_STEPS)
            steps = [s.start_step for s in stages] + [stages[-1].end_step]
            for ax, (key, _) in zip(axes, QUANTITIES):
                values = [getattr(s, key) for s in stages]
                ax.step(steps, values + values[-1:], where="post", color=color, linestyle=style,
                        label=f"V2-{model.upper()} {preset}")
    for ax, (_, title) in zip(axes, QUANTITIES):
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("EfficientNetV2 progressive learning, 4 stages: code (solid) vs paper Table 6 "
                 "(dashed)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
