"""`create_model`: a registered variant (or any block strings) -> a Flax NNX EfficientNet."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from effnetv2_jax.models.arch import ArchConfig
from effnetv2_jax.models.efficientnet import EfficientNet
from effnetv2_jax.models.variants import Variant, get_variant

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_model_args(name_or_arch, overrides: dict) -> tuple[ArchConfig, Variant | None]:
    """A registered name or an ArchConfig, plus ArchConfig overrides -> (arch, variant or None)."""
    if isinstance(name_or_arch, ArchConfig):
        return name_or_arch.replace(**overrides), None
    if isinstance(name_or_arch, str):
        variant = get_variant(name_or_arch)
        return variant.arch.replace(**overrides), variant
    raise ValueError(f"expected a registered model name or an ArchConfig, got {name_or_arch!r}")


def _resolve_dtype(dtype):
    if isinstance(dtype, str):
        try:
            return _DTYPES[dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r} (valid: {', '.join(_DTYPES)})") from None
    return dtype


def create_model(name_or_arch: str | ArchConfig, *, num_classes: int | None = None,
                 include_top: bool = True, dtype="float32", conv_impl: str | None = None,
                 remat: bool = False, seed: int = 0, **overrides) -> EfficientNet:
    """Builds an EfficientNet.

    Args:
      name_or_arch: a registered name (`effnetv2_jax.list_models()`), e.g. "efficientnetv2-s",
        "efficientnet-b4", "efficientnet-lite0"; or an `ArchConfig`.
      num_classes: classifier outputs (default 1000).
      include_top: False returns pooled features [batch, num_features] instead of logits; use
        `model.extract_endpoints(x)` for the feature maps at strides 2-32.
      dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
      conv_impl: "xla", "cpu", or None for the backend's default (see `models.ops`).
      remat: recompute each block in the backward pass (less training memory, about a third
        more compute); config key `model.remat`.
      seed: parameter initialisation seed.
      **overrides: any `ArchConfig` field, e.g. `block_strings=[...]`, `width=`, `depth=`,
        `dropout_rate=`, `survival_prob=`, `activation=`, `bn_momentum=`. An unknown name raises
        ValueError listing the valid ones.

    Example:
      >>> model = create_model("efficientnetv2-s", num_classes=10)
      >>> logits = model(images)                          # eval: [batch, 10]
      >>> logits = model(images, train=True, key=key)     # train: batch-stat BN, dropout, drop-path
    """
    arch, _ = resolve_model_args(name_or_arch, overrides)
    return EfficientNet(arch, 1000 if num_classes is None else num_classes,
                        include_top=include_top, dtype=_resolve_dtype(dtype),
                        conv_impl=conv_impl, remat=remat, rngs=nnx.Rngs(params=seed))


def abstract_model(name_or_arch: str | ArchConfig, **kwargs) -> EfficientNet:
    """`create_model` under `nnx.eval_shape`: every array is a ShapeDtypeStruct, nothing is
    allocated. Use it for counts and as an Orbax restore target."""
    return nnx.eval_shape(lambda: create_model(name_or_arch, **kwargs))
