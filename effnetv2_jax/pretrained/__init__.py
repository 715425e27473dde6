"""Pretrained weights: the table of tags per variant (`tags.py`, data, no JAX) and the one-call
loading through the Hugging Face Hub cache and a converted-weights cache (`load.py`).

    effnetv2_jax.create_model("efficientnetv2-s", pretrained="in21k-ft-in1k")
    effnetv2_jax.load_pretrained("efficientnet-b0", "ns-jft-in1k")
    effnetv2_jax.list_pretrained("efficientnetv2-s")      # ['in21k-ft-in1k', 'in21k', 'in1k']
"""

from effnetv2_jax._extras import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("WEIGHTS", "Weights", "default_tag", "get_weights", "list_pretrained",
                     "markdown_table"), "tags"),
    **dict.fromkeys(("PretrainedWeightsError", "cache_root", "create_model", "detect_source",
                     "fetch", "load_pretrained", "resolve", "resolve_init_checkpoint"),
                    "load"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
