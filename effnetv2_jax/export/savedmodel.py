"""A TensorFlow SavedModel of the inference function, through `jax2tf`, with a serving signature
that `tf.saved_model.load` and TF Serving use.

Route: in JAX 0.10 `jax2tf.convert` has one mode, native serialization: the JAX function is
`jax.export`-ed to StableHLO and embedded in one `XlaCallModule` TF op (the old `enable_xla=False`
mode that emitted plain TF ops is gone; the argument is accepted, ignored and deprecated). TF runs
that op through XLA, so the SavedModel computes what JAX computes. The module is lowered for the
`platforms` given ("cpu" by default; add "cuda" / "tpu" to serve there). TFLite's converter
legalizes the StableHLO inside the op to builtin TFLite kernels (see `tflite.py`).

The weights are `tf.Variable`s passed to the op (the jax2tf recommendation), so they live in
`variables/` and the graph stays small. Signature `serving_default`:

* default: `images` float32 [batch, size, size, 3], normalised -> `probabilities`
  [batch, num_classes];
* with preprocessing: `images` uint8 [batch, height, width, 3], any height and width -> the
  checkpoint's eval preprocessing (`tf_preprocess.eval_batch`) -> `probabilities`,
  `top_k_values` float32 [batch, k] and `top_k_indices` int32 [batch, k], best first.

`assets/labels.txt` holds the class names, one per line, in class-index order.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from effnetv2_jax._extras import require
from effnetv2_jax.preprocessing import Preprocessing
from effnetv2_jax.export.inference_fn import InferenceFunction
from effnetv2_jax.export.tf_preprocess import eval_batch

tf = require("tensorflow", "data")
jax2tf = require("jax.experimental.jax2tf", "data")

SIGNATURE = "serving_default"
INPUT_NAME = "images"


class ServingModule(tf.Module):
    """The weights as variables and `serve`, the serving function (see the module docstring).

    Args:
      fn: the inference function.
      batch: a fixed batch size, or None for any.
      preprocess: the checkpoint's eval preprocessing; None exports the bare model.
      top_k: classes in the top-k outputs (with preprocessing only).
      platforms: platforms the embedded StableHLO is lowered for.
    """

    def __init__(self, fn: InferenceFunction, *, batch: int | None = None,
                 preprocess: Preprocessing | None = None, top_k: int = 5,
                 platforms: Sequence[str] = ("cpu",)):
        super().__init__(name="effnetv2_jax")
        size = fn.image_size
        self.weights = [tf.Variable(w, trainable=False, name=name)
                        for w, name in zip(fn.weights, fn.names)]
        polymorphic = None if batch is not None else f"(batch, {size}, {size}, 3)"
        self._model = jax2tf.convert(fn.apply, polymorphic_shapes=[None, polymorphic],
                                     with_gradient=False,
                                     native_serialization_platforms=tuple(platforms))
        self._size, self._preprocess = size, preprocess
        self._top_k = min(top_k, fn.num_classes)
        if preprocess is None:
            spec = tf.TensorSpec([batch, size, size, 3], tf.float32, name=INPUT_NAME)
        else:
            spec = tf.TensorSpec([batch, None, None, 3], tf.uint8, name=INPUT_NAME)
        self.serve = tf.function(self._serve, input_signature=[spec], autograph=False)

    def _serve(self, images):
        if self._preprocess is not None:
            images = eval_batch(images, self._size, self._preprocess)
        probabilities = self._model(self.weights, images)
        outputs = {"probabilities": probabilities}
        if self._preprocess is not None:
            values, indices = tf.math.top_k(probabilities, k=self._top_k)
            outputs.update(top_k_values=values, top_k_indices=indices)
        return outputs


def write_savedmodel(fn: InferenceFunction, directory: str, *, class_names: Sequence[str],
                     batch: int | None = None, preprocess: Preprocessing | None = None,
                     top_k: int = 5, platforms: Sequence[str] = ("cpu",)) -> ServingModule:
    """Saves a `ServingModule` to `directory` (which must not exist yet)."""
    module = ServingModule(fn, batch=batch, preprocess=preprocess, top_k=top_k,
                           platforms=platforms)
    with tempfile.TemporaryDirectory() as scratch:
        labels = os.path.join(scratch, "labels.txt")
        with open(labels, "w", encoding="utf-8") as f:
            f.writelines(f"{name}\n" for name in class_names)
        module.labels = tf.saved_model.Asset(labels)
        tf.saved_model.save(module, directory,
                            signatures={SIGNATURE: module.serve.get_concrete_function()})
    return module
