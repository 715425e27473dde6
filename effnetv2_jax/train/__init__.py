"""Training: sharded jit step, progressive learning, Orbax checkpoints, CLU metrics.

The names below are imported on first use (PEP 562): `import effnetv2_jax.train` needs no
TensorFlow, `train_and_evaluate` does (`pip install 'effnetv2_jax[data]'`).
"""

from effnetv2_jax._extras import lazy_exports

_EXPORTS = {
    "base_config": "config", "validate": "config",
    "evaluate": "loop", "train_and_evaluate": "loop",
    "Stage": "progressive", "make_stages": "progressive", "preset": "progressive",
    "stage_at": "progressive",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
