"""Export a checkpoint for serving: a `jax.export` file, a TF SavedModel (jax2tf), TFLite or ONNX.

    python -m effnetv2_jax.export --checkpoint DIR --format {savedmodel,jax_export,tflite,onnx} \
        --output OUT [--batch N|dynamic] [--with-preprocessing] [--quantize]

    >>> from effnetv2_jax.export import export_checkpoint, load_jax_export
    >>> export_checkpoint("/tmp/v2s", "jax_export", "/tmp/v2s.jax")
    >>> load_jax_export("/tmp/v2s.jax").call(images)     # normalised [batch, 384, 384, 3]

TensorFlow is imported only by the SavedModel and TFLite paths, jax2onnx only by the ONNX one.
"""

from effnetv2_jax._extras import lazy_exports

# Imported on first use (PEP 562): `python -m effnetv2_jax.export --help` needs no JAX.
_EXPORTS = {
    **dict.fromkeys(("FORMATS", "PLATFORMS", "ExportReport", "check_request", "export_checkpoint",
                     "export_loaded", "parse_batch"), "from_checkpoint"),
    **dict.fromkeys(("EXPORT_CONV_IMPL", "InferenceFunction", "inference_function"),
                    "inference_fn"),
    **dict.fromkeys(("export_function", "load_jax_export", "write_jax_export"), "jax_export"),
    **dict.fromkeys(("ONNXConversionError", "convert_function", "load_onnx", "write_onnx"),
                    "onnx_export"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
