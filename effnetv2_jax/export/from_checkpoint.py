"""A checkpoint (trained or converted) -> one deployable artefact: `export_checkpoint`.

Formats (`FORMATS`):

* "jax_export": one file, `jax.export` of the inference function (`jax_export.py`);
* "savedmodel": a SavedModel directory through jax2tf (`savedmodel.py`);
* "tflite": one `.tflite` file converted from that SavedModel (`tflite.py`), float32 or
  dynamic-range quantized;
* "onnx": one `.onnx` file, the JAX function converted by jax2onnx with BatchNorm folded into
  the convolutions (`onnx_export.py`, which says why not tf2onnx).

Each uses the checkpoint's EMA weights (unless `use_ema=False`) in eval mode. Every artefact
gets its metadata as JSON (model, class names, eval size, preprocessing, input and output specs,
the source checkpoint and step, versions): `<output>.meta.json` beside a file,
`<output>/assets.extra/effnetv2_jax.json` inside a SavedModel. Arguments are checked before
anything is loaded, and the artefact is written under a temporary name and renamed at the end,
so a failed export leaves nothing half-written at `output`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from effnetv2_jax import paths
from effnetv2_jax._extras import require
from effnetv2_jax.progress import progress

if TYPE_CHECKING:  # the CLI's --help needs neither JAX nor the model
    from effnetv2_jax.inference import LoadedModel

FORMATS = ("savedmodel", "jax_export", "tflite", "onnx")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
SAVEDMODEL_METADATA = os.path.join("assets.extra", "effnetv2_jax.json")


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What `export_checkpoint` wrote.

    Attributes:
      format: one of FORMATS. path: the artefact. metadata_path: its JSON metadata.
      size_bytes: the artefact's size (a SavedModel: all its files).
      metadata: the metadata written. seconds: wall time of the export.
    """

    format: str
    path: str
    metadata_path: str
    size_bytes: int
    metadata: dict
    seconds: float

    def summary(self) -> str:
        m = self.metadata
        lines = [f"wrote {self.format} to {self.path} ({self.size_bytes / 2**20:.2f} MiB) in "
                 f"{self.seconds:.1f} s",
                 f"  model: {m['model']}, {m['num_classes']} classes, {m['weights']} weights of "
                 f"{m['checkpoint']} (step {m['step']})",
                 f"  input: {m['input']['name']} {m['input']['dtype']} {m['input']['shape']}",
                 "  outputs: " + ", ".join(f"{o['name']} {o['dtype']} {o['shape']}"
                                           for o in m["outputs"]),
                 f"  metadata: {self.metadata_path}"]
        return "\n".join(lines)


def parse_batch(value) -> int | None:
    """"dynamic" / None -> None (any batch size); a positive integer (or its string) -> it.

    Raises ValueError for anything else, e.g. 0."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "dynamic"):
        return None
    try:
        batch = int(value)
    except (TypeError, ValueError):
        batch = None
    if batch is None or batch < 1 or str(value).strip() not in (str(batch), f"+{batch}"):
        raise ValueError(f"--batch must be a positive integer or 'dynamic', got {value!r}")
    return batch


def _check_output(fmt: str, output: str, overwrite: bool) -> str:
    if paths.is_remote(output):
        return _check_remote_output(output, overwrite)
    output = os.path.abspath(os.path.expanduser(output))
    if not os.path.lexists(output):
        return output
    if not overwrite:
        raise FileExistsError(f"--output {output} already exists; pass --overwrite to replace "
                              f"it or choose another path")
    if fmt == "savedmodel":
        if os.path.isdir(output) and os.listdir(output) and not os.path.exists(
                os.path.join(output, "saved_model.pb")):
            raise FileExistsError(f"--output {output} is a directory that is not a SavedModel; "
                                  f"--overwrite replaces only a SavedModel: remove it yourself "
                                  f"or choose another path")
    elif os.path.isdir(output):
        raise FileExistsError(f"--output {output} is a directory; {fmt} writes one file: give "
                              f"a file path")
    return output


def check_request(fmt: str, output: str, *, batch: int | None, with_preprocessing: bool,
                  quantize: bool, top_k: int, platforms: Sequence[str],
                  overwrite: bool) -> str:
    """Validates the export arguments without loading anything; returns the absolute output.

    Raises ValueError (bad value or combination) or FileExistsError (output exists)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (valid: {', '.join(FORMATS)})")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive integer or None (dynamic), got {batch!r}")
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise ValueError(f"unknown platform(s) {unknown or platforms} (valid: "
                         f"{', '.join(PLATFORMS)})")
    if quantize and fmt != "tflite":
        raise ValueError(f"--quantize is dynamic-range TFLite quantization: it needs --format "
                         f"tflite, not {fmt}")
    if fmt == "tflite" and tuple(platforms) != ("cpu",):
        raise ValueError(f"--platforms {','.join(platforms)}: TFLite converts the CPU lowering; "
                         f"platforms apply to savedmodel and jax_export")
    if fmt == "onnx" and tuple(platforms) != ("cpu",):
        raise ValueError(f"--platforms {','.join(platforms)}: an ONNX model has no lowering; "
                         f"it runs on any onnxruntime execution provider (platforms apply to "
                         f"savedmodel and jax_export)")
    if with_preprocessing and fmt in ("jax_export", "onnx"):
        raise ValueError(f"--with-preprocessing needs --format savedmodel or tflite: the eval "
                         f"preprocessing is TF ops (crop, resize), and its crop size depends on "
                         f"the image size, which a {fmt} input shape cannot; export the bare "
                         f"model and preprocess with effnetv2_jax.inference.preprocess_images")
    return _check_output(fmt, output, overwrite)


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def _metadata(loaded: LoadedModel, fmt: str, *, batch, with_preprocessing, quantize, top_k,
              platforms) -> dict:
    size, num_classes = loaded.eval_size, loaded.model.num_classes
    k = min(top_k, num_classes)
    if with_preprocessing:
        spec = {"name": "images", "dtype": "uint8", "shape": [batch, None, None, 3]}
        outputs = [{"name": "probabilities", "dtype": "float32", "shape": [batch, num_classes]},
                   {"name": "top_k_values", "dtype": "float32", "shape": [batch, k]},
                   {"name": "top_k_indices", "dtype": "int32", "shape": [batch, k]}]
    else:
        spec = {"name": "images", "dtype": "float32", "shape": [batch, size, size, 3],
                "normalised": "(pixels - mean) / std, after the eval crop and resize"}
        outputs = [{"name": "probabilities", "dtype": "float32",
                    "shape": [batch, num_classes]}]
    return {"format": fmt, "model": loaded.metadata["model"],
            "model_overrides": loaded.metadata.get("model_overrides") or {},
            "num_classes": num_classes, "class_names": list(loaded.class_names),
            "eval_size": size, "preprocessing": loaded.preprocessing,
            "with_preprocessing": with_preprocessing, "quantized": quantize,
            "input": spec, "outputs": outputs, "batch": batch or "dynamic",
            "platforms": list(platforms), "checkpoint": loaded.path, "step": loaded.step,
            "weights": loaded.weights,
            "versions": _versions(fmt)}


def _versions(fmt: str) -> dict[str, str]:
    import jax

    import effnetv2_jax

    versions = {"effnetv2_jax": effnetv2_jax.__version__, "jax": jax.__version__}
    if fmt == "onnx":
        for package in ("jax2onnx", "onnx", "onnxruntime"):
            versions[package] = importlib.metadata.version(package)
    elif fmt != "jax_export":  # savedmodel and tflite went through TensorFlow
        tf = require("tensorflow", "data")

        versions["tensorflow"] = tf.__version__
    return versions


def _write(loaded: LoadedModel, fmt: str, target: str, *, batch, with_preprocessing, quantize,
           top_k, platforms) -> None:
    from effnetv2_jax.export.inference_fn import inference_function

    fn = inference_function(loaded)
    if fmt == "jax_export":
        from effnetv2_jax.export.jax_export import write_jax_export

        write_jax_export(fn, target, batch=batch, platforms=platforms)
        return
    if fmt == "onnx":
        from effnetv2_jax.export.onnx_export import write_onnx

        write_onnx(fn, target, batch=batch)
        return
    from effnetv2_jax.export.savedmodel import write_savedmodel

    preprocess = loaded.preprocess if with_preprocessing else None
    kwargs = dict(class_names=loaded.class_names, batch=batch, preprocess=preprocess,
                  top_k=top_k, platforms=platforms)
    if fmt == "savedmodel":
        write_savedmodel(fn, target, **kwargs)
        return
    from effnetv2_jax.export.jax_export import export_function
    from effnetv2_jax.export.tflite import convert_savedmodel

    with tempfile.TemporaryDirectory() as scratch:
        saved = os.path.join(scratch, "savedmodel")
        write_savedmodel(fn, saved, **kwargs)
        flatbuffer = convert_savedmodel(
            saved, quantize=quantize,
            describe_module=lambda: export_function(fn, batch=batch).mlir_module())
    with open(target, "wb") as f:
        f.write(flatbuffer)


def _check_remote_output(output: str, overwrite: bool) -> str:
    if paths.resolve(output).exists() and not overwrite:
        raise FileExistsError(f"--output {output} already exists; pass --overwrite to replace "
                              f"it or choose another path")
    return output


def _export_remote(loaded: LoadedModel, fmt: str, output: str, **kwargs) -> ExportReport:
    """Exports into a local folder, then copies the artefact and its metadata to `output`
    (gs://...): a failed export leaves nothing at `output`."""
    remote = paths.resolve(output)
    with tempfile.TemporaryDirectory(prefix="effnetv2_jax.export.") as scratch:
        report = export_loaded(loaded, fmt, os.path.join(scratch, remote.name), **kwargs)
        paths.remove_tree(remote)
        paths.copy_tree(report.path, remote)
        metadata_path = f"{remote}/{SAVEDMODEL_METADATA}" if fmt == "savedmodel" else (
            f"{remote}.meta.json")
        if fmt != "savedmodel":
            paths.copy_tree(report.metadata_path, metadata_path)
    return dataclasses.replace(report, path=output, metadata_path=metadata_path)


def export_loaded(loaded: LoadedModel, fmt: str, output: str, *, batch: int | None = None,
                  with_preprocessing: bool = False, quantize: bool = False, top_k: int = 5,
                  platforms: Sequence[str] = ("cpu",), overwrite: bool = False) -> ExportReport:
    """Exports a `LoadedModel` (see `export_checkpoint` for the arguments)."""
    start = time.perf_counter()
    platforms = tuple(platforms)
    output = check_request(fmt, output, batch=batch, with_preprocessing=with_preprocessing,
                           quantize=quantize, top_k=top_k, platforms=platforms,
                           overwrite=overwrite)
    if paths.is_remote(output):
        return _export_remote(loaded, fmt, output, batch=batch,
                              with_preprocessing=with_preprocessing, quantize=quantize,
                              top_k=top_k, platforms=platforms)
    metadata = _metadata(loaded, fmt, batch=batch, with_preprocessing=with_preprocessing,
                         quantize=quantize, top_k=top_k, platforms=platforms)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", dir=parent)
    try:
        target = os.path.join(scratch, "artefact")
        _write(loaded, fmt, target, batch=batch, with_preprocessing=with_preprocessing,
               quantize=quantize, top_k=top_k, platforms=platforms)
        if fmt == "savedmodel":
            meta_target = os.path.join(target, SAVEDMODEL_METADATA)
            os.makedirs(os.path.dirname(meta_target), exist_ok=True)
        else:
            meta_target = os.path.join(scratch, "meta.json")
        with open(meta_target, "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=1)
        if os.path.isdir(output) and not os.path.islink(output):
            shutil.rmtree(output)  # checked by check_request: a SavedModel, and --overwrite
        elif os.path.lexists(output):
            os.remove(output)  # a file or link, and --overwrite
        os.replace(target, output)
        if fmt == "savedmodel":
            metadata_path = os.path.join(output, SAVEDMODEL_METADATA)
        else:
            metadata_path = output + ".meta.json"
            os.replace(meta_target, metadata_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ExportReport(format=fmt, path=output, metadata_path=metadata_path,
                        size_bytes=_size(output), metadata=metadata,
                        seconds=time.perf_counter() - start)


def export_checkpoint(checkpoint: str, fmt: str, output: str, *, batch: int | None = None,
                      with_preprocessing: bool = False, quantize: bool = False, top_k: int = 5,
                      step: int | None = None, use_ema: bool = True,
                      platforms: Sequence[str] = ("cpu",),
                      overwrite: bool = False) -> ExportReport:
    """Exports a checkpoint's inference function.

    Args:
      checkpoint: a workdir, checkpoints directory or step directory (trained or converted).
      fmt: "savedmodel", "jax_export", "tflite" or "onnx".
      output: the SavedModel directory, or the file to write.
      batch: a fixed batch size; None (default) accepts any.
      with_preprocessing: savedmodel / tflite: take uint8 [batch, H, W, 3] images of any size,
        apply the checkpoint's eval preprocessing, return probabilities and the top-k. Without
        it, the input is normalised float32 [batch, size, size, 3] at the eval size and the
        output the probabilities.
      quantize: tflite only: dynamic-range quantization (int8 weights).
      top_k: classes in the top-k outputs (capped at the class count).
      step: the checkpoint step (default: the newest). use_ema: EMA weights (default) or raw.
      platforms: what the StableHLO is lowered for (savedmodel, jax_export): "cpu", "cuda",
        "rocm", "tpu".
      overwrite: replace an existing output (a SavedModel directory or a file).
    Raises:
      ValueError, FileExistsError: bad arguments, found before loading anything;
      FileNotFoundError: no checkpoint at `checkpoint`;
      TFLiteConversionError: an op did not convert to TFLite (named in the message);
      ONNXConversionError: a JAX primitive did not convert to ONNX (named in the message).
    """
    platforms = tuple(platforms)
    check_request(fmt, output, batch=batch, with_preprocessing=with_preprocessing,
                  quantize=quantize, top_k=top_k, platforms=platforms, overwrite=overwrite)
    from effnetv2_jax.inference import find_checkpoint, load_checkpoint  # noqa: PLC0415

    find_checkpoint(checkpoint, step)  # a missing checkpoint fails before JAX builds anything
    from effnetv2_jax.export.inference_fn import EXPORT_CONV_IMPL

    with progress(total=2, desc=f"export {fmt}", unit="stage") as bar:
        bar.set_postfix_str("loading the checkpoint")
        loaded = load_checkpoint(checkpoint, step=step, use_ema=use_ema,
                                 conv_impl=EXPORT_CONV_IMPL)
        bar.update()
        bar.set_postfix_str(f"converting and writing {fmt}")
        report = export_loaded(loaded, fmt, output, batch=batch,
                               with_preprocessing=with_preprocessing, quantize=quantize,
                               top_k=top_k, platforms=platforms, overwrite=overwrite)
        bar.update()
    return report
