"""`jax.export` of the inference function: one file that loads and runs with JAX alone.

    exported = jax.export.deserialize(open("model.jax", "rb").read())   # or load_jax_export
    probabilities = exported.call(images)   # normalised float32 [batch, size, size, 3]

The file is `Exported.serialize()`: StableHLO with the weights as constants, the batch dimension
symbolic ("batch") unless a fixed batch was asked for. No Flax, no effnetv2_jax and no checkpoint
are needed to run it; JAX checks the calling convention version and the platform on load.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import export

from effnetv2_jax.export.inference_fn import InferenceFunction


def input_spec(size: int, batch: int | None) -> jax.ShapeDtypeStruct:
    """float32 [batch, size, size, 3]; `batch=None` is the symbolic dimension "batch"."""
    leading = export.symbolic_shape("batch")[0] if batch is None else batch
    return jax.ShapeDtypeStruct((leading, size, size, 3), jnp.float32)


def export_function(fn: InferenceFunction, *, batch: int | None = None,
                    platforms: Sequence[str] = ("cpu",)) -> export.Exported:
    """The inference function, weights included, exported for `platforms` ("cpu", "cuda",
    "tpu"; one module serves all of them)."""
    return export.export(jax.jit(fn.closed()), platforms=tuple(platforms))(
        input_spec(fn.image_size, batch))


def write_jax_export(fn: InferenceFunction, path: str, *, batch: int | None = None,
                     platforms: Sequence[str] = ("cpu",)) -> export.Exported:
    """Exports and writes the serialized bytes to `path`; returns the `Exported`."""
    exported = export_function(fn, batch=batch, platforms=platforms)
    with open(path, "wb") as f:
        f.write(exported.serialize())
    return exported


def load_jax_export(path: str) -> export.Exported:
    """A file written by `write_jax_export` -> `Exported`; call it with `.call(images)`."""
    with open(path, "rb") as f:
        return export.deserialize(bytearray(f.read()))
