"""Scaling a base network into a family: V1 compound scaling, the V2 rule, and the grid search.

    base = base_from_variant("efficientnet-b0")            # or base_from_config(config)
    b2ish = compound_scale(base, phi=2)                     # width 1.21, depth 1.44, 296 px
    create_model(b2ish.arch, num_classes=1000)
    v2 = v2_scale(base_from_variant("efficientnetv2-s"), phi=2)   # about V2-M's size

Command line: `python -m effnetv2_jax.scaling --base=configs/... --phi=1..4 [--rule=v2]`.
"""

from effnetv2_jax._extras import lazy_exports

# Imported on first use (PEP 562): `python -m effnetv2_jax.scaling --help` needs no JAX.
_EXPORTS = {
    **dict.fromkeys(("ScaledModel", "ScalingBase", "base_from_variant", "round_resolution"),
                    "base"),
    **dict.fromkeys(("ALPHA", "BETA", "GAMMA", "coefficient_table", "compound_scale",
                     "flops_factor"), "compound"),
    **dict.fromkeys(("base_from_config", "member_config", "write_config"), "configs"),
    **dict.fromkeys(("Candidate", "grid_candidates", "run_grid_search"), "grid_search"),
    **dict.fromkeys(("MAX_EVAL_SIZE", "v2_scale"), "v2_rule"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
