"""Training-aware neural architecture search (EfficientNetV2 section 3.3): reward A * S^w * P^v.

    python -m effnetv2_jax.nas --config=configs/nas_quickstart.py --workdir=DIR
"""

from effnetv2_jax.nas.log import Record
from effnetv2_jax.nas.proxy import CandidateInterrupted, ProxyResult, train_candidate
from effnetv2_jax.nas.reward import PAPER_V, PAPER_W, reward
from effnetv2_jax.nas.search import (SearchResult, add_nas, candidate_config, nas_defaults,
                                     run_search)
from effnetv2_jax.nas.space import SearchSpace
from effnetv2_jax.nas.strategies import AgingEvolution, RandomSearch, make_strategy
