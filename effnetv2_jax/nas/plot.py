"""`pareto.png`: held-out accuracy against train step time, with the Pareto front marked."""

from __future__ import annotations

from collections.abc import Sequence

from etils import epath

from effnetv2_jax._extras import require
from effnetv2_jax.nas.log import Record

PARETO_NAME = "pareto.png"


def pareto_front(records: Sequence[Record]) -> list[Record]:
    """The successful candidates no other beats on both axes (faster and at least as accurate,
    or as fast and more accurate), fastest first."""
    points = sorted((r for r in records if r.ok and r.reused is None),
                    key=lambda r: (r.step_seconds, -r.accuracy, r.index))
    front, best_accuracy = [], -1.0
    for r in points:
        if r.accuracy > best_accuracy:
            front.append(r)
            best_accuracy = r.accuracy
    return front


def plot_pareto(records: Sequence[Record], path: str, best_index: int | None = None) -> None:
    """Scatter of every successful candidate (step time in ms, top-1), the front as a line,
    the best reward as a star; each point labelled with its candidate index."""
    # Only the search's writer needs matplotlib.
    require("matplotlib", "plots", "the search's Pareto plot").use("Agg")
    plt = require("matplotlib.pyplot", "plots", "the search's Pareto plot")

    points = [r for r in records if r.ok and r.reused is None]
    front = pareto_front(records)
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    axes.scatter([r.step_seconds * 1e3 for r in points], [r.accuracy for r in points],
                 s=28, color="tab:blue", alpha=0.7, label="candidate")
    axes.step([r.step_seconds * 1e3 for r in front], [r.accuracy for r in front], where="post",
              color="tab:orange", linewidth=1.5, label="Pareto front")
    axes.scatter([r.step_seconds * 1e3 for r in front], [r.accuracy for r in front], s=40,
                 facecolors="none", edgecolors="tab:orange")
    for r in points:
        axes.annotate(str(r.index), (r.step_seconds * 1e3, r.accuracy), fontsize=7,
                      xytext=(3, 3), textcoords="offset points")
    best = next((r for r in points if r.index == best_index), None)
    if best is not None:
        axes.scatter([best.step_seconds * 1e3], [best.accuracy], marker="*", s=200,
                     color="tab:red", zorder=3, label=f"best reward ({best.id})")
    axes.set_xlabel("train step time (ms, median after compilation)")
    axes.set_ylabel("held-out top-1 after proxy training")
    axes.set_title(f"architecture search: {len(points)} candidates")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    with epath.Path(path).open("wb") as f:
        figure.savefig(f, format="png")
    plt.close(figure)
