"""ONNX export of the inference function: jax2onnx traces the JAX function, onnxruntime folds it.

    import onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    probabilities = session.run(None, {"images": images})[0]   # normalised float32 [b, S, S, 3]

Why jax2onnx and not tf2onnx: tf2onnx converts TF ops, and the SavedModel that jax2tf writes
holds the whole network as one `XlaCallModule` op (StableHLO inside; JAX 0.10 has no other jax2tf
mode), which tf2onnx has no handler for: on EfficientNetV2-B0 it stops at that op. jax2onnx
converts the JAX function itself, primitive by primitive: TF-SAME padding becomes explicit
`pads`, depthwise convolutions `Conv` with `group`, SE's pooling `ReduceMean` and its 1x1
convolutions `Gemm`, SiLU `Sigmoid` x `Mul`; the batch dimension stays symbolic ("batch").
Besides onnx and onnxruntime its dependencies are pure Python (equinox, onnx-ir, ...), and
none is TensorFlow.

The traced graph keeps the eval-mode BatchNorm as Sub/Div/Mul/Add on constants and the NHWC <->
NCHW transposes around each convolution; onnxruntime's basic graph optimizations (constant
folding, Conv+Mul and Conv+Add fusion, transpose elimination; all standard ONNX ops, no
onnxruntime-specific ones) fold every BatchNorm into its convolution's weights and bias before
the model is written, so any ONNX runtime sees the small graph.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import logging
import os
import tempfile
from collections.abc import Callable

from effnetv2_jax._extras import require
from effnetv2_jax.export.inference_fn import InferenceFunction


class _DropKnownNoise(logging.Filter):
    """Drops two warnings of jax2onnx's that concern nothing we export: its dm_pix plugins do not
    import with this JAX (they convert dm_pix's ops, which the model does not use; each comes with
    a traceback), and onnx_ir skips an untyped shape constant when serialising."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ((message.startswith("Skipping") and "jax2onnx.plugins.dm_pix." in message)
                    or message.startswith("The value type for shape"))


@contextlib.contextmanager
def _known_noise_dropped():
    """`_DropKnownNoise` on jax2onnx's and onnx_ir's loggers, for the duration only."""
    loggers = [logging.getLogger(n) for n in ("jax2onnx.plugins.plugin_system", "onnx_ir.serde")]
    noise = _DropKnownNoise()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


with _known_noise_dropped():  # jax2onnx imports its plugins on import
    jax2onnx = require("jax2onnx", "onnx")
onnx = require("onnx", "onnx")
ort = require("onnxruntime", "onnx")

# jax2onnx writes ReduceMean's axes as an input, which ONNX allows from opset 18 (ReduceMean-18);
# onnxruntime has run opset 18 since 1.14.
OPSET = 18
INPUT_NAME = "images"
BATCH_SYMBOL = "batch"


class ONNXConversionError(RuntimeError):
    """The function has a JAX primitive or pattern that jax2onnx cannot convert (named)."""


def convert_function(fn: Callable, image_size: int, *, batch: int | None = None,
                     output_name: str = "probabilities", fold: bool = True):
    """A JAX function of normalised float32 [batch, size, size, 3] images -> an `onnx.ModelProto`.

    Args:
      fn: images -> one float32 array; its weights as constants (`InferenceFunction.closed()`).
      image_size: the input's height and width in pixels.
      batch: a fixed batch size; None keeps the batch dimension symbolic ("batch").
      output_name: the graph output's name.
      fold: fold BatchNorm and constants with onnxruntime's basic optimizations (see the
        module docstring); False returns jax2onnx's graph as traced.
    Raises:
      ONNXConversionError: jax2onnx has no conversion for a primitive of `fn`.
    """
    leading = BATCH_SYMBOL if batch is None else batch
    try:
        with _known_noise_dropped():
                model = jax2onnx.to_onnx(fn, [(leading, image_size, image_size, 3)],
                                     model_name="effnetv2_jax", opset=OPSET,
                                     input_names=[INPUT_NAME], output_names=[output_name])
    except NotImplementedError as error:
        raise ONNXConversionError(
            f"jax2onnx {importlib.metadata.version('jax2onnx')} cannot convert this function: "
            f"{error}. Export it with --format jax_export or savedmodel instead, or build the "
            f"layer from ops jax2onnx converts (convolutions, matmuls, elementwise)") from error
    return fold_model(model) if fold else model


def fold_model(model):
    """`model` after onnxruntime's basic (hardware-independent) graph optimizations."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3  # errors only
    with tempfile.TemporaryDirectory() as scratch:
        options.optimized_model_filepath = os.path.join(scratch, "folded.onnx")
        ort.InferenceSession(model.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def write_onnx(fn: InferenceFunction, path: str, *, batch: int | None = None):
    """Converts the inference function (weights inside) and writes it to `path`; returns the
    `onnx.ModelProto`."""
    model = convert_function(fn.closed(), fn.image_size, batch=batch)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


def op_counts(model) -> dict[str, int]:
    """Op type -> count in the model's main graph."""
    return dict(collections.Counter(node.op_type for node in model.graph.node))


def load_onnx(path: str, *, threads: int = 0):
    """An onnxruntime CPU session for `path` (`threads`=0: onnxruntime's default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
