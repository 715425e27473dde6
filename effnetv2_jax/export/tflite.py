"""TFLite flatbuffers converted from the SavedModel, float32 or dynamic-range quantized.

Route: `tf.lite.TFLiteConverter.from_saved_model` on the `savedmodel.py` export. The converter
freezes the weight variables into constants, deserializes the StableHLO inside jax2tf's
`XlaCallModule` op and legalizes it to builtin TFLite kernels (CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED, MEAN, ...), next to the TF preprocessing ops, which are all builtins too. No
Select-TF ("Flex") ops and no custom ops are needed, so the stock TFLite / LiteRT interpreter runs
the file.

`quantize=True` is dynamic-range quantization (`Optimize.DEFAULT`, no representative dataset):
weight tensors of 1024 elements or more are stored as int8 with per-channel scales, activations
stay float32.

When the converter cannot map an op, `TFLiteConversionError` names it and says why: a TF op
without a TFLite kernel is named as such; when it is jax2tf's `XlaCallModule` (some StableHLO op
inside it has no TFLite lowering), the StableHLO ops the module holds that TFLite cannot run
(custom calls, with their targets) are listed.
"""

from __future__ import annotations

import collections
import re
import warnings
from collections.abc import Callable

import numpy as np

from effnetv2_jax._extras import require
from effnetv2_jax.export.savedmodel import SIGNATURE

tf = require("tensorflow", "data")


class TFLiteConversionError(RuntimeError):
    """The TFLite converter rejected an op; the message names it and the reason."""


_REASONS = {
    "ERROR_NEEDS_FLEX_OPS": "no builtin TFLite kernel (it would need the Select-TF / Flex "
                            "runtime)",
    "ERROR_NEEDS_CUSTOM_OPS": "no builtin TFLite kernel and no Flex kernel (a custom op)",
}


def _stablehlo_culprits(module_text: str) -> str:
    """What in a StableHLO module TFLite cannot lower: custom calls (by target), else the op
    kinds it holds."""
    targets = sorted(set(re.findall(r"custom_call[^\n]*?@([\w.]+)", module_text))
                     | set(re.findall(r'call_target_name\s*=\s*"([^"]+)"', module_text)))
    if targets:
        return "stablehlo.custom_call to " + ", ".join(targets)
    ops = collections.Counter(re.findall(r"\b(stablehlo\.[a-z_]+)", module_text))
    return "one of the StableHLO ops " + ", ".join(sorted(ops))


def _describe(error: Exception, describe_module: Callable[[], str] | None) -> str:
    problems = []
    for item in getattr(error, "errors", None) or []:
        op = item.operator.name or "an op"
        reason = item.error_message.split("\n", 1)[0]
        code_name = re.search(r"Error code: (\w+)", item.error_message)
        why = _REASONS.get(code_name.group(1) if code_name else "", reason)
        if op == "tf.XlaCallModule":
            inside = (_stablehlo_culprits(describe_module()) if describe_module
                      else "an op of the JAX function")
            problems.append(f"tf.XlaCallModule (the jax2tf-converted JAX model): {inside} has "
                            f"no TFLite lowering, so the converter kept the whole module as one "
                            f"TF op, which has {why}")
        else:
            problems.append(f"{op}: {why}")
    if not problems:
        first = str(error).strip().splitlines()
        return first[0] if first else type(error).__name__
    return "; ".join(dict.fromkeys(problems))


def convert_savedmodel(saved_model_dir: str, *, quantize: bool = False,
                       describe_module: Callable[[], str] | None = None) -> bytes:
    """The SavedModel's `serving_default` signature as a TFLite flatbuffer.

    Args:
      quantize: dynamic-range quantization (int8 weights, float32 activations).
      describe_module: returns the embedded module's StableHLO text (`Exported.mlir_module()`);
        called only to name the failing op in an error message.
    Raises:
      TFLiteConversionError: an op did not convert; the message says which and why.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as error:  # the converter raises ConverterError and plain Exceptions
        raise TFLiteConversionError(
            f"TFLite conversion of {saved_model_dir} failed: "
            f"{_describe(error, describe_module)}") from error


def _interpreter(model_content: bytes, num_threads: int | None):
    """The LiteRT interpreter when `ai_edge_litert` is installed, else TensorFlow's copy (which
    warns that it is deprecated in favour of LiteRT)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Interpreter(model_content=model_content, num_threads=num_threads)


class TFLiteModel:
    """Runs a converted file through its `serving_default` signature.

        model = TFLiteModel.from_file("model.tflite")
        outputs = model(images)     # {"probabilities": ..., ["top_k_values", "top_k_indices"]}

    Any batch size (and, with preprocessing, image size) is accepted: the input is resized per
    call when its shape changes.
    """

    def __init__(self, model_content: bytes, *, num_threads: int | None = None):
        self.interpreter = _interpreter(model_content, num_threads)
        self._runner = self.interpreter.get_signature_runner(SIGNATURE)
        (self.input_name,) = self._runner.get_input_details()

    @classmethod
    def from_file(cls, path: str, *, num_threads: int | None = None) -> "TFLiteModel":
        with open(path, "rb") as f:
            return cls(f.read(), num_threads=num_threads)

    def __call__(self, images) -> dict[str, np.ndarray]:
        return self._runner(**{self.input_name: np.asarray(images)})

    def op_counts(self) -> dict[str, int]:
        """How many of each TFLite op the graph holds, e.g. {"CONV_2D": 40, ...}."""
        return dict(collections.Counter(op["op_name"]
                                        for op in self.interpreter._get_ops_details()))

    def tensor_dtypes(self) -> set[str]:
        """The dtypes of the graph's tensors (int8 weights appear after quantization)."""
        return {np.dtype(t["dtype"]).name for t in self.interpreter.get_tensor_details()}
