"""Training-aware neural architecture search (EfficientNetV2 section 3.3): reward A * S^w * P^v.

    python -m effnetv2_jax.nas --config=configs/nas_quickstart.py --workdir=DIR
"""

from effnetv2_jax._extras import lazy_exports
# The function, imported now: the submodule of the same name must never replace it here.
from effnetv2_jax.nas.reward import PAPER_V, PAPER_W, reward

# The rest are imported on first use (PEP 562): `python -m effnetv2_jax.nas --help` needs no JAX.
_EXPORTS = {
    "Record": "log", "CandidateInterrupted": "proxy", "ProxyResult": "proxy",
    "train_candidate": "proxy",
    **dict.fromkeys(("SearchResult", "add_nas", "candidate_config", "nas_defaults", "run_search"),
                    "search"),
    "SearchSpace": "space", "AgingEvolution": "strategies", "RandomSearch": "strategies",
    "make_strategy": "strategies",
}
__all__ = sorted([*_EXPORTS, "PAPER_V", "PAPER_W", "reward"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
