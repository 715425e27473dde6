"""The function every export format serialises: normalised images -> class probabilities, with
a loaded checkpoint's weights (EMA by default) in eval mode.

It is written as `apply(weights, images)` over a flat list of weight arrays, so the same
function can close over the weights (jax.export: one self-contained file) or take them as
arguments (jax2tf: TF variables in a SavedModel, well clear of the 2 GiB GraphDef limit).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from effnetv2_jax.inference import LoadedModel
from effnetv2_jax.models.factory import abstract_model

# lax.conv lowers to stablehlo.convolution, which the TFLite converter turns into CONV_2D and
# DEPTHWISE_CONV_2D; the "cpu" implementation's shifted-window sums would reach TFLite as k*k
# separate multiply-adds per depthwise conv. Both give the same numbers to 1e-5.
EXPORT_CONV_IMPL = "xla"


@dataclasses.dataclass(frozen=True)
class InferenceFunction:
    """`apply(weights, images)`: normalised float32 [batch, size, size, 3] -> float32
    probabilities [batch, num_classes] (softmax of the logits).

    Attributes:
      apply: the pure function; `weights` is a list shaped like `weights` below.
      weights: the model's parameters and BN statistics, float32 numpy arrays, in
        `jax.tree.leaves` order of the model's state.
      names: one name per weight, its path in the model ("blocks/0/fused_bn/mean").
      image_size: the checkpoint's eval size in pixels (the exported input's height and width).
      num_classes: classifier outputs.
    """

    apply: Callable
    weights: list[np.ndarray]
    names: list[str]
    image_size: int
    num_classes: int

    def __call__(self, images):
        """float32 [batch, size, size, 3] -> probabilities [batch, num_classes]."""
        return self.apply(self.weights, images)

    def closed(self) -> Callable:
        """images -> probabilities, with the weights as constants (for jax.export)."""
        weights = [jnp.asarray(w) for w in self.weights]
        return lambda images: self.apply(weights, images)


def _weight_name(path) -> str:
    parts = re.findall(r"\[['\"]?([^'\"\]]+)['\"]?\]|\.(\w+)", jax.tree_util.keystr(path))
    return "/".join(a or b for a, b in parts if (a or b) != "value")


def export_model(loaded: LoadedModel):
    """The loaded model with XLA convolutions (`EXPORT_CONV_IMPL`), same weights."""
    model = loaded.model
    if model.conv_impl == EXPORT_CONV_IMPL:
        return model
    metadata = loaded.metadata
    rebuilt = abstract_model(metadata["model"], num_classes=metadata["num_classes"],
                             dtype=model.dtype, conv_impl=EXPORT_CONV_IMPL,
                             **dict(metadata.get("model_overrides") or {}))
    graphdef, _ = nnx.split(rebuilt)
    return nnx.merge(graphdef, nnx.state(model))


def inference_function(loaded: LoadedModel) -> InferenceFunction:
    """A `LoadedModel` (from `load_checkpoint`) -> its `InferenceFunction`."""
    if loaded.model.num_classes is None:
        raise ValueError("the model has no classifier (include_top=False): nothing to export")
    graphdef, state = nnx.split(export_model(loaded))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [_weight_name(path) for path, _ in leaves]
    weights = [np.asarray(leaf, dtype=np.float32) for _, leaf in leaves]

    def apply(weights, images):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, list(weights)))
        return jax.nn.softmax(model(images).astype(jnp.float32), axis=-1)

    return InferenceFunction(apply=apply, weights=weights, names=names,
                             image_size=loaded.eval_size,
                             num_classes=loaded.model.num_classes)
