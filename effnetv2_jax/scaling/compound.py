"""EfficientNet (V1) compound scaling: depth, width and resolution grow together with one phi.

Tan & Le 2019, section 3.3: depth d = alpha^phi, width w = beta^phi, resolution r = gamma^phi,
with alpha * beta^2 * gamma^2 ~= 2, so FLOPs grow by about 2^phi (FLOPs are linear in depth and
quadratic in width and resolution). A grid search at phi = 1 on B0 found alpha = 1.2,
beta = 1.1, gamma = 1.15 (alpha * beta^2 * gamma^2 = 1.920); `grid_search.py` repeats that search
for any base. Measured with `count_flops` on B0, the FLOPs of `compound_scale(b0, phi)` are
2.23, 4.69, 8.43, 16.4, 27.1, 52.1, 100.5 times B0's for phi = 1..7: a growth per unit of phi of
2.23, 2.17, 2.04, 2.01, 1.93, 1.93, 1.93 (FLOPs ratio^(1/phi)), within 15% of 2. Against 2^phi
itself phi = 2 is 17% over: ceil(1.44 * 1) doubles B0's two one-block stages.

The published B1-B8 were not produced by this formula at phi = 1, 2, ...: their coefficients
were rounded by hand (B1 keeps B0's width; B3 is about phi = 2.4 by FLOPs). The registry keeps the
published values (`effnetv2_jax.get_variant("efficientnet-b3")`). Published next to the
formula's values at phi = i (resolution rounded to a multiple of 8), and the phi each published
model's FLOPs imply (log of FLOPs / B0's FLOPs, base 1.920); `coefficient_table()` regenerates
this table and a test keeps the two equal:

| model | published w | d | res | formula phi | w | d | res | FLOPs / B0 | phi by FLOPs |
|---|---|---|---|---|---|---|---|---|---|
| efficientnet-b0 | 1.0 | 1.0 | 224 | 0 | 1.000 | 1.000 | 224 | 1.00 | 0.00 |
| efficientnet-b1 | 1.0 | 1.1 | 240 | 1 | 1.100 | 1.200 | 256 | 1.78 | 0.88 |
| efficientnet-b2 | 1.1 | 1.2 | 260 | 2 | 1.210 | 1.440 | 296 | 2.58 | 1.45 |
| efficientnet-b3 | 1.2 | 1.4 | 300 | 3 | 1.331 | 1.728 | 344 | 4.74 | 2.38 |
| efficientnet-b4 | 1.4 | 1.8 | 380 | 4 | 1.464 | 2.074 | 392 | 11.39 | 3.73 |
| efficientnet-b5 | 1.6 | 2.2 | 456 | 5 | 1.611 | 2.488 | 448 | 26.61 | 5.03 |
| efficientnet-b6 | 1.8 | 2.6 | 528 | 6 | 1.772 | 2.986 | 520 | 49.42 | 5.98 |
| efficientnet-b7 | 2.0 | 3.1 | 600 | 7 | 1.949 | 3.583 | 592 | 97.83 | 7.02 |
| efficientnet-b8 | 2.2 | 3.6 | 672 | 8 | 2.144 | 4.300 | 688 | 162.25 | 7.80 |

B8 comes from the AdvProp paper and L2 (w 4.3, d 5.3, 800 px) from Noisy Student; neither was
in the 2019 grid, and L2 is left out here.
"""

from __future__ import annotations

import math

from effnetv2_jax.models.variants import get_variant
from effnetv2_jax.scaling.base import (ScaledModel, ScalingBase, check_coefficients,
                                       round_resolution)

# Tan & Le 2019, section 3.3: the grid search's result on B0.
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
PUBLISHED_V1 = tuple(f"efficientnet-b{i}" for i in range(9))


def flops_factor(alpha: float, beta: float, gamma: float) -> float:
    """FLOPs multiplier per unit of phi: alpha * beta^2 * gamma^2 (the constraint's left side)."""
    return alpha * beta ** 2 * gamma ** 2


def compound_scale(base: ScalingBase, phi: float, alpha: float = ALPHA, beta: float = BETA,
                   gamma: float = GAMMA, *, resolution_multiple: int = 8) -> ScaledModel:
    """The V1 rule: every stage deeper by alpha^phi, every layer wider by beta^phi, images larger
    by gamma^phi.

    Args:
      base: the network to scale (`base_from_variant("efficientnet-b0")`, or
        `configs.base_from_config(config)` for any training config).
      phi: compound coefficient, >= 0 (fractions allowed); 0 returns the base unchanged.
      alpha, beta, gamma: depth, width and resolution multipliers per unit of phi (>= 1).
      resolution_multiple: train and eval sizes are rounded to the nearest multiple of this
        (8 or 16 are usual); phi = 0 keeps the base's sizes as they are.
    Returns:
      a `ScaledModel` with width = base width * beta^phi, depth = base depth * alpha^phi, the
      base's block strings, and sizes round(base size * gamma^phi).
    """
    check_coefficients(phi, alpha, beta, gamma)
    if phi == 0:
        train, evaluate = base.train_size, base.eval_size
    else:
        train = round_resolution(base.train_size * gamma ** phi, resolution_multiple)
        evaluate = round_resolution(base.eval_size * gamma ** phi, resolution_multiple)
    arch = base.arch.replace(width=round(base.arch.width * beta ** phi, 9),
                             depth=round(base.arch.depth * alpha ** phi, 9))
    return ScaledModel(rule="v1", phi=phi, alpha=alpha, beta=beta, gamma=gamma, arch=arch,
                       train_size=train, eval_size=evaluate)


def coefficient_table(alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA,
                      resolution_multiple: int = 8) -> list[str]:
    """Markdown rows: the published B0-B8 coefficients (from the registry) next to the
    formula's at phi = i, and the phi each published model's FLOPs imply."""
    from effnetv2_jax.models.counting import count_flops  # noqa: PLC0415 - JAX; this table only

    b0 = get_variant(PUBLISHED_V1[0])
    base = ScalingBase(b0.arch, b0.train_size, b0.eval_size, b0.name)
    base_flops = count_flops(b0.name)
    rows = ["| model | published w | d | res | formula phi | w | d | res | FLOPs / B0 "
            "| phi by FLOPs |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for phi, name in enumerate(PUBLISHED_V1):
        variant = get_variant(name)
        member = compound_scale(base, phi, alpha, beta, gamma,
                                resolution_multiple=resolution_multiple)
        ratio = count_flops(name) / base_flops
        rows.append(f"| {name} | {variant.arch.width} | {variant.arch.depth} | "
                    f"{variant.eval_size} | {phi} | {member.width:.3f} | {member.depth:.3f} | "
                    f"{member.eval_size} | {ratio:.2f} | "
                    f"{math.log(ratio) / math.log(flops_factor(alpha, beta, gamma)):.2f} |")
    return rows
