"""Export a checkpoint for serving: a `jax.export` file, a TF SavedModel (jax2tf) or TFLite.

    python -m effnetv2_jax.export --checkpoint DIR --format {savedmodel,jax_export,tflite} \
        --output OUT [--batch N|dynamic] [--with-preprocessing] [--quantize]

    >>> from effnetv2_jax.export import export_checkpoint, load_jax_export
    >>> export_checkpoint("/tmp/v2s", "jax_export", "/tmp/v2s.jax")
    >>> load_jax_export("/tmp/v2s.jax").call(images)     # normalised [batch, 384, 384, 3]

TensorFlow is imported only by the SavedModel and TFLite paths.
"""

from effnetv2_jax.export.from_checkpoint import (FORMATS, PLATFORMS, ExportReport,
                                                 check_request, export_checkpoint,
                                                 export_loaded, parse_batch)
from effnetv2_jax.export.inference_fn import (EXPORT_CONV_IMPL, InferenceFunction,
                                              inference_function)
from effnetv2_jax.export.jax_export import export_function, load_jax_export, write_jax_export

__all__ = ["EXPORT_CONV_IMPL", "FORMATS", "PLATFORMS", "ExportReport", "InferenceFunction",
           "check_request", "export_checkpoint", "export_function", "export_loaded",
           "inference_function", "load_jax_export", "parse_batch", "write_jax_export"]
