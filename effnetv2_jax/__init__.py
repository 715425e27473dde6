"""effnetv2_jax: EfficientNetV2 (and V1, Lite) in JAX / Flax NNX.

    >>> import effnetv2_jax
    >>> model = effnetv2_jax.create_model("efficientnetv2-s", num_classes=1000)
    >>> effnetv2_jax.count_params("efficientnetv2-s")["trainable"]
    21458488
"""

from effnetv2_jax import xla_cpu_flags

xla_cpu_flags.apply()  # before anything below imports JAX; see xla_cpu_flags.py

from effnetv2_jax.models import (ArchConfig, BlockSpec, ConvType, EfficientNet,  # noqa: E402
                                 Preprocessing, Variant, abstract_model, count_flops,
                                 count_params, create_model, decode, encode, get_variant,
                                 list_models, register)

from effnetv2_jax.inference import (LoadedModel, Predictions, load_checkpoint,  # noqa: E402
                                    predict)

__version__ = "0.1.0"
