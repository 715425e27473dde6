"""Plots parameters and FLOPs against phi for the V1 rule and the V2 rule from one base.

    python benchmarks/plot_scaling.py [--base efficientnetv2-s] [--phi-max 4]
        [--out docs/scaling.png] [--csv benchmarks/results/scaling.csv]

Both rules start from the same registered variant (default V2-S) with alpha, beta, gamma =
1.2, 1.1, 1.15: the V1 rule (`compound_scale`, every stage deeper, sizes at multiples of 8) and
the V2 rule (`v2_scale`, the same block budget in the last two stages, eval size capped at 480,
multiples of 16). FLOPs are multiply-adds at each member's eval size (`count_flops`), parameters
trainable ones (`count_params`, built abstractly); the published V2 models are drawn as
horizontal lines. Nothing is trained.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
from effnetv2_jax.models.counting import count_flops, count_params  # noqa: E402
from effnetv2_jax.scaling import base_from_variant, compound_scale, v2_scale  # noqa: E402

RULES = {"v1": (compound_scale, "tab:blue", "V1 rule (compound)"),
         "v2": (v2_scale, "tab:red", "V2 rule (late stages, <= 480 px)")}
REFERENCES = ("efficientnetv2-s", "efficientnetv2-m", "efficientnetv2-l")
FIELDS = ("rule", "phi", "width", "depth", "blocks", "train_size", "eval_size", "params",
          "flops")


def family_rows(base_name: str, phis: list[float]) -> list[dict]:
    base = base_from_variant(base_name)
    rows = []
    for rule, (scale, _, _) in RULES.items():
        for phi in phis:
            member = scale(base, phi)
            rows.append({"rule": rule, "phi": phi, "width": round(member.width, 4),
                         "depth": round(member.depth, 4), "blocks": member.num_blocks,
                         "train_size": member.train_size, "eval_size": member.eval_size,
                         "params": count_params(member.arch)["trainable"],
                         "flops": count_flops(member.arch, member.eval_size)})
            print(" ".join(f"{k}={rows[-1][k]}" for k in FIELDS), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="efficientnetv2-s", help="a registered variant")
    parser.add_argument("--phi-max", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "docs" / "scaling.png"))
    parser.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "scaling.csv"))
    args = parser.parse_args()
    phis = [i / 2 for i in range(2 * args.phi_max + 1)]
    rows = family_rows(args.base, phis)

    csv_path = Path(args.csv)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {csv_path}")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, unit, title in ((axes[0], "params", 1e6, "trainable parameters (M)"),
                                 (axes[1], "flops", 1e9, "FLOPs (G multiply-adds) at eval size")):
        for rule, (_, color, label) in RULES.items():
            points = [r for r in rows if r["rule"] == rule]
            ax.plot([r["phi"] for r in points], [r[key] / unit for r in points], "o-",
                    color=color, label=label)
        for name, style in zip(REFERENCES, (":", "--", "-.")):
            value = (count_params(name)["trainable"] if key == "params" else count_flops(name))
            ax.axhline(value / unit, color="gray", linestyle=style, linewidth=1)
            ax.annotate("V2-" + name.split("-")[-1].upper(),
                        (phis[min(1, len(phis) - 1)], value / unit),
                        textcoords="offset points", xytext=(2, 3),
                        fontsize=8, color="dimgray")
        ax.set_yscale("log")
        ax.set_xlabel("phi")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Scaling {args.base} with alpha=1.2, beta=1.1, gamma=1.15: V1 rule vs V2 rule")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
