"""`convert`: a weight file of one of the sources -> a checkpoint `load_checkpoint` reads.

Steps: open the file with the source's converter (which names, for every model leaf, the tensor
that feeds it) -> settle the classifier (same class count, or re-initialised with `new_head`)
-> `common.match` loads every tensor strictly -> write the checkpoint with metadata (model, class
count, sizes, preprocessing, source and the file's SHA-256).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from effnetv2_jax import paths
from effnetv2_jax.convert import common, keras, layout, tf1, timm, writer
from effnetv2_jax.inference import imagenet_class_names
from effnetv2_jax.models.arch import resolve_arch
from effnetv2_jax.models.factory import abstract_model
from effnetv2_jax.models.layers import Dense
from effnetv2_jax.models.variants import get_variant

SOURCES = common.SOURCES
CLASSIFIER_LEAVES = ("classifier.kernel", "classifier.bias")


@dataclasses.dataclass(frozen=True)
class ConversionReport:
    """What `convert` wrote.

    Attributes:
      checkpoint: the step directory written (`<output>/checkpoints/0`).
      metadata: the checkpoint metadata (model, num_classes, source, source_sha256, ...).
      head_reinitialized: True when the classifier was replaced (`new_head`).
    """

    checkpoint: str
    metadata: dict
    head_reinitialized: bool

    def summary(self) -> str:
        m = self.metadata
        lines = [f"wrote {self.checkpoint}",
                 f"  model {m['model']}, {m['num_classes']} classes, eval {m['eval_size']} px "
                 f"({m['eval_crop']} crop, {m['preprocessing']['interpolation']})",
                 f"  from {m['source']} {m['source_file']} (sha256 {m['source_sha256'][:16]}..., "
                 f"{m['source_weights']} weights)"]
        if self.head_reinitialized:
            lines.append(f"  classifier re-initialised: {m['source_num_classes']} -> "
                         f"{m['num_classes']} classes (seed {m['head_seed']}); train it before use")
        return "\n".join(lines)


def flatten(tree) -> dict[str, object]:
    """A nested dict -> {"blocks.3.expand_conv.kernel": leaf}."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        flat[".".join(str(k.key) for k in path)] = leaf
    return flat


def unflatten_like(template, values: dict[str, np.ndarray]):
    """Fills `template`'s structure (keys, int block indices included) from flat `values`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: values[".".join(str(k.key) for k in path)], template)


def _open(source: str, path: str, model: str, *, use_ema: bool, prefix: str | None):
    variant = get_variant(model)
    resolved = resolve_arch(variant.arch)
    layers = layout.model_layers(resolved)
    if source == "tf1":
        return tf1.open_source(path, model=model, layers=layers, use_ema=use_ema, prefix=prefix)
    if source == "timm":
        return timm.open_source(path, model=model, layers=layers, resolved=resolved,
                                use_ema=use_ema)
    if source == "keras":
        return keras.open_source(path, model=model, layers=layers, resolved=resolved,
                                 family=variant.family)
    raise ValueError(f"unknown source {source!r} (valid: {', '.join(SOURCES)})")


def convert(source: str, model: str, input_path: str, output_dir: str, *,
            num_classes: int | None = None, new_head: bool = False, use_ema: bool = True,
            seed: int = 0, mean=None, std=None, eval_size: int | None = None,
            tf1_prefix: str | None = None, overwrite: bool = False) -> ConversionReport:
    """Converts a weight file into a checkpoint under `output_dir`.

    Args:
      source: "tf1" (official TF checkpoint: a directory, prefix or `.index`), "timm"
        (`.safetensors` or `.pth` state dict) or "keras" (`.weights.h5`, legacy `.h5`, `.keras`).
      model: a registered variant name, e.g. "efficientnetv2-s", "efficientnet-b3".
      input_path: the weight file.
      output_dir: where `checkpoints/0/` is written.
      num_classes: classifier outputs; default: the file's.
      new_head: allow `num_classes` to differ from the file's (fine-tuning): the classifier is
        then re-initialised with `seed` and reported. Without it, a different count is an error.
      use_ema: prefer EMA copies (tf1 `/ExponentialMovingAverage`, timm `state_dict_ema`).
      mean, std: per-channel normalisation in pixel units (0-255) to record instead of the
        variant's, e.g. 127.5 for AdvProp weights.
      eval_size: the eval size in pixels to record instead of the variant's (L2 at 475 px).
      tf1_prefix: the variable scope of a TF1 checkpoint (default: the model name).
      overwrite: replace checkpoints already in `output_dir`.
    Raises:
      ConversionError: the file does not fit the model; the message lists every missing,
        unexpected and wrongly shaped tensor.
    """
    variant = get_variant(model)
    writer.check_output(output_dir, overwrite)  # fail before reading a large file
    # The readers (safetensors, torch, h5py, TF's checkpoint reader) open local files: a gs://
    # input is copied to a temporary folder, deleted when `scratch` goes at return.
    local_input, scratch = paths.local_file(input_path, siblings=source == "tf1")  # noqa: F841
    opened = _open(source, local_input, model, use_ema=use_ema, prefix=tf1_prefix)
    names = set(opened.reader.names())
    head_names = [opened.mapping[leaf].name for leaf in CLASSIFIER_LEAVES]
    source_classes = (int(opened.reader.read(head_names[1]).shape[-1])
                      if head_names[1] in names else None)
    if num_classes is None:
        if source_classes is None:
            raise common.ConversionError(
                f"{input_path} has no classifier ({head_names[1]} is missing): pass num_classes "
                f"(--num-classes) and new_head=True (--new-head) to start a fresh one")
        num_classes = source_classes
    replace_head = source_classes != num_classes
    if replace_head and not new_head:
        what = f"{source_classes} classes" if source_classes else "no classifier"
        raise common.ConversionError(
            f"{input_path} has {what} but {num_classes} were asked for; pass new_head=True "
            f"(--new-head) to re-initialise the classifier for fine-tuning")

    abstract = abstract_model(model, num_classes=num_classes)
    _, params, batch_stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    params, batch_stats = nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)
    expected = {leaf: tuple(x.shape) for leaf, x in {**flatten(params),
                                                     **flatten(batch_stats)}.items()}
    if replace_head:
        expected = {k: v for k, v in expected.items() if k not in CLASSIFIER_LEAVES}
    what = f"{source} file {input_path} -> {model} ({num_classes} classes)"
    values = common.match(expected, opened.mapping, opened.reader, what=what,
                          ignored=opened.ignored, dropped=head_names if replace_head else ())
    if replace_head:
        dense = Dense(abstract.num_features, num_classes, key=jax.random.key(seed))
        values["classifier.kernel"] = np.asarray(dense.kernel[...])
        values["classifier.bias"] = np.asarray(dense.bias[...])
        logging.warning("classifier re-initialised: %s -> %d classes", source_classes, num_classes)

    class_names = imagenet_class_names() if num_classes == 1000 and not replace_head else []
    extra = {"source": source, "source_file": os.fspath(paths.resolve(input_path)),
             "source_files": [os.path.basename(f) for f in opened.files],
             "source_sha256": paths.sha256_files(opened.files),
             "source_num_classes": source_classes, "head_reinitialized": replace_head,
             **({"head_seed": seed} if replace_head else {}), **opened.notes}
    if eval_size is not None:
        extra.update(eval_size=eval_size, eval_crop=writer.eval_crop(
            eval_size, variant.preprocessing.squash_min_size))
    metadata = writer.checkpoint_metadata(variant, num_classes=num_classes,
                                          class_names=class_names, mean=mean, std=std, **extra)
    checkpoint = writer.write_checkpoint(output_dir, unflatten_like(params, values),
                                         unflatten_like(batch_stats, values), metadata,
                                         overwrite=overwrite)
    return ConversionReport(checkpoint, metadata, replace_head)
