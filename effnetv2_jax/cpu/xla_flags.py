"""XLA:CPU settings measured faster for EfficientNet, for entry points to set before JAX starts
its CPU backend.

XLA:CPU in jaxlib 0.10 hands dots (our 1x1 convs) and their neighbours to YNNPACK fusions. For
EfficientNet shapes its own (Eigen) dots are faster, train and eval (docs/performance.md gives
the figures; `benchmarks/vs_timm.py` measures the current ones). So `apply()` adds
`--xla_cpu_experimental_ynn_fusion_type=` (no YNN fusions) to XLA_FLAGS:
  - only if XLA_FLAGS does not already choose YNN fusions (the user's setting wins),
  - only for jaxlib 0.10.x, where the flag exists and was measured (XLA aborts on an unknown
    flag),
  - not if EFFNETV2_JAX_KEEP_XLA_FLAGS is set (to anything non-empty): the opt-out.

Importing `effnetv2_jax` never calls it: library code leaves the process as it found it. The
entry points do (`effnetv2_jax.cpu.configure_process`: `python -m effnetv2_jax.main` and the
other CLIs, the benchmarks, the test suite's conftest). In a notebook or your own script, call
it first thing, before JAX's first computation: XLA reads the variable once, when it starts a
backend, and the setting then holds for the whole process; TPU and GPU ignore xla_cpu flags.
"""

from __future__ import annotations

import importlib.metadata
import os

OPT_OUT_ENV = "EFFNETV2_JAX_KEEP_XLA_FLAGS"
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def apply() -> bool:
    """Adds the flag to XLA_FLAGS where the rules above allow; returns whether it did."""
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get(OPT_OUT_ENV) or "ynn_fusion_type" in flags:
        return False
    try:
        jaxlib_version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    if not jaxlib_version.startswith("0.10."):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return True
