"""Weight converters: official TF1 checkpoints, timm state dicts and Keras weight files ->
the checkpoint layout `effnetv2_jax.load_checkpoint` (and training's restore) reads.

    python -m effnetv2_jax.convert --source timm --model efficientnetv2-s \
        --input tf_efficientnetv2_s.safetensors --output /tmp/v2s

Every converter is strict (see `common.match`). torch, timm and keras are not needed: TF1
checkpoints are read with TensorFlow, `.safetensors` with the small `safetensors` package, `.pth`
with torch (`pip install 'effnetv2_jax[convert]'`), Keras files with h5py.
"""

from effnetv2_jax._extras import lazy_exports

# Imported on first use (PEP 562): `python -m effnetv2_jax.convert --help` needs no JAX.
_EXPORTS = {"SOURCES": "common", "ConversionError": "common", "ConversionReport": "pipeline",
            "convert": "pipeline", "write_model": "writer"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
