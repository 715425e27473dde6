"""effnetv2_jax: EfficientNetV2 (and V1, Lite) in JAX / Flax NNX.

    >>> import effnetv2_jax
    >>> model = effnetv2_jax.create_model("efficientnetv2-s", num_classes=1000)
    >>> model = effnetv2_jax.create_model("efficientnetv2-s", pretrained="in21k-ft-in1k")
    >>> effnetv2_jax.count_params("efficientnetv2-s")["trainable"]
    21458488

Importing the package changes nothing in the process (no environment variables, no XLA flags)
and imports JAX only when a name below is first used, so command lines answer `--help` at
once. Process-wide settings belong to entry points: `effnetv2_jax.cpu.configure_process()`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public API: name -> the module that defines it, imported on first use.
_EXPORTS = {
    **dict.fromkeys(("ArchConfig", "BlockSpec", "ConvType", "EfficientNet", "Preprocessing",
                     "Variant", "abstract_model", "count_flops", "count_params", "decode",
                     "encode", "get_variant", "list_models", "register"),
                    "effnetv2_jax.models"),
    **dict.fromkeys(("LoadedModel", "Predictions", "load_checkpoint", "predict"),
                    "effnetv2_jax.inference"),
    # create_model is models.create_model plus `pretrained=`.
    **dict.fromkeys(("create_model", "load_pretrained"), "effnetv2_jax.pretrained.load"),
    "list_pretrained": "effnetv2_jax.pretrained.tags",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from effnetv2_jax.inference import LoadedModel, Predictions, load_checkpoint, predict
    from effnetv2_jax.models import (ArchConfig, BlockSpec, ConvType, EfficientNet,
                                     Preprocessing, Variant, abstract_model, count_flops,
                                     count_params, decode, encode, get_variant, list_models,
                                     register)
    from effnetv2_jax.pretrained.load import create_model, load_pretrained
    from effnetv2_jax.pretrained.tags import list_pretrained


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        value = importlib.import_module(f"{__name__}.{name}")  # a subpackage: effnetv2_jax.models
    else:
        raise AttributeError(f"module 'effnetv2_jax' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
