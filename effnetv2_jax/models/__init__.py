"""EfficientNet V1 / V2 / Lite as Flax NNX modules, built from block-spec strings.

The architecture as data (block_spec, arch, rounding, variants) needs no JAX; the names below
are imported on first use (PEP 562), so reading or counting an architecture's blocks imports only
what it needs.
"""

from effnetv2_jax._extras import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("ArchConfig", "ResolvedArch", "ResolvedBlock", "resolve_arch"), "arch"),
    **dict.fromkeys(("BlockSpec", "ConvType", "decode", "decode_all", "encode"), "block_spec"),
    **dict.fromkeys(("count_flops", "count_params"), "counting"),
    "EfficientNet": "efficientnet",
    **dict.fromkeys(("abstract_model", "create_model"), "factory"),
    **dict.fromkeys(("CONV_IMPLS", "default_conv_impl"), "ops"),
    **dict.fromkeys(("Preprocessing", "Variant", "get_variant", "list_models", "register"),
                    "variants"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
