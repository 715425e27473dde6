"""Scaling a base network into a family: V1 compound scaling, the V2 rule, and the grid search.

    base = base_from_variant("efficientnet-b0")            # or base_from_config(config)
    b2ish = compound_scale(base, phi=2)                     # width 1.21, depth 1.44, 296 px
    create_model(b2ish.arch, num_classes=1000)
    v2 = v2_scale(base_from_variant("efficientnetv2-s"), phi=2)   # about V2-M's size

Command line: `python -m effnetv2_jax.scaling --base=configs/... --phi=1..4 [--rule=v2]`.
"""

from effnetv2_jax.scaling.base import (ScaledModel, ScalingBase, base_from_variant,
                                       round_resolution)
from effnetv2_jax.scaling.compound import (ALPHA, BETA, GAMMA, coefficient_table, compound_scale,
                                           flops_factor)
from effnetv2_jax.scaling.configs import base_from_config, member_config, write_config
from effnetv2_jax.scaling.grid_search import Candidate, grid_candidates, run_grid_search
from effnetv2_jax.scaling.v2_rule import MAX_EVAL_SIZE, v2_scale
