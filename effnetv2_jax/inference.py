"""Load a checkpoint, trained or converted, and classify images with its eval preprocessing.

    >>> import effnetv2_jax
    >>> loaded = effnetv2_jax.load_checkpoint("/tmp/v2s")        # EMA weights, on CPU
    >>> result = effnetv2_jax.predict(loaded, ["cat.jpg"], top_k=5)
    >>> result.names[0], result.probabilities[0]

`load_checkpoint` reads only the weights it needs (no optimizer state, no mesh), so checkpoints
written by a multi-device training run load on one CPU. The preprocessing comes from the
checkpoint's metadata and is applied once, by `predict`, with `effnetv2_jax.images.eval_image`:
the data pipeline's eval function (official `preprocessing.py` `preprocess_for_eval`,
`preprocess_legacy.py`) on PIL and numpy, so prediction needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from effnetv2_jax import images as images_lib
from effnetv2_jax import paths
from effnetv2_jax.images import ImageError, as_rgb, read_image  # noqa: F401 (public here too)
from effnetv2_jax.models.efficientnet import EfficientNet
from effnetv2_jax.models.factory import abstract_model
from effnetv2_jax.models.variants import get_variant
from effnetv2_jax.preprocessing import Preprocessing

CLASS_NAMES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")
_CHECKPOINTS_SUBDIR = "checkpoints"


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order ("tench, Tinca tinca", ...)."""
    with open(CLASS_NAMES_FILE, encoding="utf-8") as f:
        names = tuple(line.rstrip("\n").split("\t", 1)[1] for line in f
                      if line.strip() and not line.startswith("#"))
    if len(names) != 1000:
        raise RuntimeError(f"{CLASS_NAMES_FILE} holds {len(names)} class names, not 1000")
    return names


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """ImageNet-1k names for 1000 classes, else "class_0", "class_1", ..."""
    if num_classes == 1000:
        return imagenet_class_names()
    return tuple(f"class_{i}" for i in range(num_classes))


@dataclasses.dataclass
class LoadedModel:
    """A model with everything needed to classify raw images.

    Attributes:
      model: the EfficientNet, in eval mode when called as `model(images)` on normalised
        [batch, height, width, 3] images.
      preprocessing: the metadata's preprocessing (mean, std in pixels, interpolation,
        crop_padding, squash_min_size, train_crop); `preprocess` is it as a
        `effnetv2_jax.preprocessing.Preprocessing`.
      eval_size: the eval image size in pixels.
      class_names: one name per class.
      metadata: the checkpoint metadata as written (model, sizes, source, config...).
      step: the checkpoint step; path: its directory; weights: "ema" or "raw".
    """

    model: EfficientNet
    preprocessing: dict
    eval_size: int
    class_names: tuple[str, ...]
    metadata: dict
    step: int
    path: str
    weights: str

    def __call__(self, images):
        """Normalised images [batch, height, width, 3] -> logits [batch, num_classes]."""
        return self.model(images)

    @property
    def preprocess(self) -> Preprocessing:
        """The eval preprocessing as the `Preprocessing` the data pipeline and export take."""
        return Preprocessing.from_dict(self.preprocessing)


def find_checkpoint(path: str, step: int | None = None) -> str:
    """A step directory (`.../checkpoints/<step>`), a checkpoints directory or a workdir (with
    `checkpoints/`), local or remote (gs://...) -> the step directory: `step`, or the newest."""
    path = paths.resolve(path)
    if (path / "state").is_dir():
        return os.fspath(path)
    directory = path / _CHECKPOINTS_SUBDIR
    if not directory.is_dir():
        directory = path
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}: not a directory")
    import orbax.checkpoint as ocp

    # Orbax renames a step's temporary directory to the bare step number once it is complete;
    # on gs://, where nothing is renamed, a complete step holds its commit marker.
    steps = sorted(int(d.name) for d in directory.iterdir()
                   if d.name.isdigit() and (d / "state").is_dir()
                   and ocp.path.step.is_path_finalized(d))
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {path} (looked for <step>/state in "
                                f"{directory})")
    if step is None:
        return os.fspath(directory / str(steps[-1]))
    if step not in steps:
        raise FileNotFoundError(f"no step {step} in {directory} (steps: {steps})")
    return os.fspath(directory / str(step))


def _read_metadata(step_dir: str) -> dict:
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        return dict(checkpointer.restore(f"{step_dir}/metadata"))


def load_checkpoint(path: str, *, step: int | None = None, use_ema: bool = True,
                    dtype: str = "float32", conv_impl: str | None = None) -> LoadedModel:
    """Loads a trained or converted checkpoint onto the CPU.

    Args:
      path: a workdir (holding `checkpoints/`), a checkpoints directory or one step directory,
        local or remote (gs://bucket/...).
      step: the step to load (default: the newest).
      use_ema: load the EMA weights (the default, as the official evaluation); False loads the
        raw ones.
      dtype: compute dtype ("float32" or "bfloat16"); parameters stay float32.
      conv_impl: convolution implementation (None: the backend's default).
    Returns:
      A `LoadedModel`: the model plus its preprocessing, eval size and class names.
    """
    import orbax.checkpoint as ocp

    step_dir = find_checkpoint(path, step)
    metadata = _read_metadata(step_dir)
    overrides = dict(metadata.get("model_overrides") or {})
    model = abstract_model(metadata["model"], num_classes=metadata["num_classes"], dtype=dtype,
                           conv_impl=conv_impl, **overrides)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    keys = ("ema_params", "ema_batch_stats") if use_ema else ("params", "batch_stats")
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu),
                          {keys[0]: nnx.to_pure_dict(params),
                           keys[1]: nnx.to_pure_dict(batch_stats)})
    # A partial restore: only the weights, whatever else (optimizer state, shardings of a
    # multi-device run) the checkpoint holds.
    args = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(f"{step_dir}/state", args=args)
    nnx.replace_by_pure_dict(params, restored[keys[0]])
    nnx.replace_by_pure_dict(batch_stats, restored[keys[1]])
    model = nnx.merge(graphdef, params, batch_stats)

    num_classes = metadata["num_classes"]
    names = metadata.get("class_names") or []
    class_names = tuple(names) if len(names) == num_classes else default_class_names(num_classes)
    return LoadedModel(model=model, preprocessing=dict(metadata["preprocessing"]),
                       eval_size=int(metadata["eval_size"]),
                       class_names=class_names, metadata=metadata,
                       step=int(paths.resolve(step_dir).name), path=step_dir,
                       weights="ema" if use_ema else "raw")


def preprocess_images(images: Sequence, preprocess: Preprocessing, size: int) -> np.ndarray:
    """Decoded images of any sizes -> normalised float32 [batch, size, size, 3] (centre crop or
    squash, resize, normalise: `effnetv2_jax.images.eval_image`)."""
    return images_lib.preprocess_images(images, preprocess, size)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Top-k classes per image, best first.

    Attributes:
      indices: int [batch, k] class indices.
      names: [batch][k] class names.
      probabilities: float32 [batch, k] softmax probabilities.
    """

    indices: np.ndarray
    names: list[list[str]]
    probabilities: np.ndarray


@nnx.jit
def _probabilities(model: EfficientNet, images):
    return jax.nn.softmax(model(images), axis=-1)


def _as_image_list(images) -> list:
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if hasattr(images, "__array__"):  # numpy or jax: one image, or a batch [B, H, W, C]
        array = np.asarray(images)
        return list(array) if array.ndim == 4 else [array]
    return list(images)


def predict(model, images, top_k: int = 5, *, image_size: int | None = None,
            variant: str | None = None, batch_size: int = 32) -> Predictions:
    """Classifies raw images with the model's eval preprocessing.

    Args:
      model: a `LoadedModel` (from `load_checkpoint`), or an `EfficientNet` together with
        `variant` (a registered name whose preprocessing, eval size and class names apply).
      images: image paths, decoded images ([H, W, 3] uint8, or float pixels in 0-255; any sizes),
        a batch [B, H, W, 3], or a single image or path.
      top_k: classes returned per image.
      image_size: eval size in pixels (default: the checkpoint's / variant's).
      batch_size: images per forward pass.
    Returns:
      `Predictions` (indices, names, probabilities), one row per image, best class first.
    """
    if isinstance(model, LoadedModel):
        net, preprocess = model.model, model.preprocess
        size, class_names = image_size or model.eval_size, model.class_names
    elif isinstance(model, EfficientNet):
        if variant is None:
            raise ValueError("predict needs the preprocessing: pass a model from "
                             "load_checkpoint, or variant='<registered name>' with an "
                             "EfficientNet")
        spec = get_variant(variant)
        net, preprocess = model, Preprocessing.from_metadata(spec.preprocessing)
        size, class_names = image_size or spec.eval_size, default_class_names(model.num_classes)
    else:
        raise TypeError(f"expected a LoadedModel or an EfficientNet, got {type(model).__name__}")
    if net.num_classes is None:
        raise ValueError("the model has no classifier (include_top=False)")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    top_k = min(top_k, net.num_classes)
    images = [read_image(x) if isinstance(x, (str, os.PathLike)) else x
              for x in _as_image_list(images)]
    if not images:
        raise ValueError("no images given")
    batch = preprocess_images(images, preprocess, size)
    probs = np.concatenate([np.asarray(_probabilities(net, batch[i:i + batch_size]))
                            for i in range(0, len(batch), batch_size)])
    indices = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    return Predictions(indices=indices,
                       names=[[class_names[i] for i in row] for row in indices],
                       probabilities=np.take_along_axis(probs, indices, axis=-1))
