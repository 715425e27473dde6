"""XLA:CPU settings measured faster for EfficientNet, set before JAX starts its CPU backend.

XLA:CPU in jaxlib 0.10 hands dots (our 1x1 convs) and their neighbours to YNNPACK fusions.
For EfficientNet shapes its own (Eigen) dots are faster: V2-S train step at 128 px, batch 32,
3.46 -> 3.19 s, and eval at 224 px, batch 32, 1.74 -> 1.47 s on 2 cores (float32, alternating
runs; `benchmarks/vs_timm.py` shows the current figures). So the package adds
`--xla_cpu_experimental_ynn_fusion_type=` (no YNN fusions) to XLA_FLAGS when it is imported:
  - only if XLA_FLAGS does not already choose YNN fusions (the user's setting wins),
  - only for jaxlib 0.10.x, where the flag exists and was measured (XLA aborts on an unknown
    flag),
  - not if EFFNETV2_JAX_KEEP_XLA_FLAGS is set.
It takes effect if the package is imported before JAX first uses its backend (XLA reads the
variable once) and then applies to the whole process; TPU and GPU ignore xla_cpu flags.
"""

from __future__ import annotations

import importlib.metadata
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def apply() -> bool:
    """Adds the flag to XLA_FLAGS where the rules above allow; returns whether it did."""
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("EFFNETV2_JAX_KEEP_XLA_FLAGS") or "ynn_fusion_type" in flags:
        return False
    try:
        jaxlib_version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    if not jaxlib_version.startswith("0.10."):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return True
