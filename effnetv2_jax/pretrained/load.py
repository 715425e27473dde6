"""Pretrained weights in one call: fetch from the Hugging Face Hub (or a local file), convert
once, then load the converted checkpoint from a cache.

    import effnetv2_jax
    model = effnetv2_jax.create_model("efficientnetv2-s", pretrained="in21k-ft-in1k")
    loaded = effnetv2_jax.load_pretrained("efficientnetv2-s")       # default tag, + preprocessing
    effnetv2_jax.predict(loaded, ["cat.jpg"])
    effnetv2_jax.load_pretrained("efficientnetv2-s", "/data/model.safetensors")   # a local file

Hub files go through `huggingface_hub.hf_hub_download` into its standard cache (`HF_HOME`,
`HF_HUB_CACHE`; `HF_HUB_OFFLINE=1` reads only the cache). The converted checkpoint is written
once under `$EFFNETV2_JAX_CACHE` (default `~/.cache/effnetv2_jax`), at
`pretrained/<model>/<key>`, where the key names the Hub file's content hash or a local file's
SHA-256, so a changed file converts again and an unchanged one never does. Nothing here touches
the network unless a tag's file is missing from the Hub cache and offline mode is off.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

from absl import logging

from effnetv2_jax import paths
from effnetv2_jax.pretrained.tags import Weights, get_weights, list_pretrained

CACHE_ENV = "EFFNETV2_JAX_CACHE"
_TIMM_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_KERAS_SUFFIXES = (".h5", ".keras")


class PretrainedWeightsError(FileNotFoundError):
    """A pretrained weight file could not be found or fetched; the message says how to pass a
    local file instead."""


def cache_root() -> str:
    """`$EFFNETV2_JAX_CACHE`, else `$XDG_CACHE_HOME/effnetv2_jax`, else
    `~/.cache/effnetv2_jax` (read at each call)."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "effnetv2_jax")


def _how_to_pass_a_file(model: str, filename: str) -> str:
    return (f"pass a local copy instead: effnetv2_jax.create_model({model!r}, "
            f"pretrained='/path/to/{filename}') or predict --model {model} --pretrained "
            f"/path/to/{filename}")


def fetch(weights: Weights) -> str:
    """The local path of `weights`' Hub file, downloaded into the Hugging Face cache if it is
    not there (and offline mode is off).

    Raises PretrainedWeightsError naming the repository, the file and how to pass it locally."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    try:
        return huggingface_hub.hf_hub_download(weights.repo_id, weights.filename)
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as error:
        if constants.HF_HUB_OFFLINE:
            reason = (f"HF_HUB_OFFLINE is set and the file is not in the Hugging Face cache "
                      f"({constants.HF_HUB_CACHE})")
        else:
            reason = f"the Hub is unreachable and the file is not cached ({type(error).__name__})"
        cause = error
    except (errors.RepositoryNotFoundError, errors.RemoteEntryNotFoundError,
            errors.RevisionNotFoundError) as error:
        reason, cause = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}", error
    except (errors.HfHubHTTPError, OSError) as error:
        reason, cause = f"download failed: {str(error).splitlines()[0][:160]}", error
    raise PretrainedWeightsError(
        f"cannot get {weights.filename} of Hugging Face repository {weights.repo_id} "
        f"({weights.model} '{weights.tag}'): {reason}. Download it where the Hub is reachable "
        f"(`hf download {weights.repo_id} {weights.filename}`, then copy the Hugging Face cache "
        f"or the file here) or {_how_to_pass_a_file(weights.model, weights.filename)}") \
        from cause


def _hub_key(path: str) -> str:
    """The content hash huggingface_hub names a cached file's blob by (the LFS SHA-256), read
    from the snapshot link; a file outside the cache layout is hashed."""
    blob = os.path.basename(os.path.realpath(path))
    if len(blob) in (40, 64) and all(c in "0123456789abcdef" for c in blob):
        return blob
    return paths.sha256_files([path])


def detect_source(path: str) -> tuple[str, str]:
    """A local weight file or directory -> (converter source, the path to give it).

    A timm state dict (`.safetensors`, `.pth`, ...), a Keras file (`.weights.h5`, `.h5`,
    `.keras`), an official TF1 checkpoint (directory, prefix or `.index`), or a directory holding
    exactly one of them (a Hub snapshot, `timm.models.save_for_hf`'s output)."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(path):
        if path.endswith(_TIMM_SUFFIXES):
            return "timm", path
        if path.endswith(_KERAS_SUFFIXES):
            return "keras", path
        if path.endswith(".index") or os.path.basename(path) == "checkpoint":
            return "tf1", path
    elif os.path.isdir(path):
        if glob.glob(os.path.join(path, "*.index")) or os.path.isfile(
                os.path.join(path, "checkpoint")):
            return "tf1", path
        found = sorted(f for f in os.listdir(path) if f.endswith(_TIMM_SUFFIXES + _KERAS_SUFFIXES))
        preferred = [f for f in found if f.endswith(".safetensors")] or found
        if len(preferred) == 1:
            return detect_source(os.path.join(path, preferred[0]))
        if preferred:
            raise ValueError(f"{path} holds several weight files ({', '.join(preferred)}): "
                             f"pass one of them")
    elif os.path.isfile(path + ".index"):
        return "tf1", path
    raise ValueError(f"{path} is not a weight file this package converts (timm "
                     f"{'/'.join(_TIMM_SUFFIXES)}, Keras .weights.h5/.h5/.keras, an official TF1 "
                     f"checkpoint) nor a checkpoint directory")


def _is_checkpoint(path: str) -> bool:
    from effnetv2_jax.inference import find_checkpoint

    try:
        find_checkpoint(path)
        return True
    except FileNotFoundError:
        return False


def _convert_once(directory: str, source: str, model: str, input_path: str,
                  **convert_kwargs) -> str:
    """Converts into `directory` unless a complete conversion is there; returns it. Written
    to a temporary sibling and renamed, so an interrupted run leaves no half checkpoint."""
    if _is_checkpoint(directory):
        logging.info("pretrained %s: converted weights from the cache %s", model, directory)
        return directory
    from effnetv2_jax.convert.pipeline import convert

    os.makedirs(os.path.dirname(directory), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".",
                               dir=os.path.dirname(directory))
    try:
        logging.info("pretrained %s: converting %s into %s", model, input_path, directory)
        convert(source, model, input_path, staging, **convert_kwargs)
        try:
            os.rename(staging, directory)
        except OSError:  # another process finished first
            if not _is_checkpoint(directory):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def resolve(model: str, pretrained: str | bool | None = True) -> str:
    """A tag of `model` (True: its default), a local weight file, or a checkpoint directory ->
    the directory of a checkpoint `load_checkpoint` reads (converting and caching as needed).

    Raises:
      ValueError: `pretrained` is neither a tag of `model` nor an existing path (the message
        lists the tags).
      PretrainedWeightsError: the tag's file is not cached and cannot be downloaded.
    """
    from effnetv2_jax.models.variants import get_variant

    get_variant(model)  # an unknown model name fails here, naming the registered ones
    tag = None if pretrained is True else pretrained
    if tag is None or tag in list_pretrained(model):
        weights = get_weights(model, tag)
        path = fetch(weights)
        key = f"{weights.repo_id.replace('/', '--')}-{_hub_key(path)[:16]}"
        extra = {"eval_size": weights.eval_size} if weights.eval_size else {}
        return _convert_once(os.path.join(cache_root(), "pretrained", model, key), "timm",
                             model, path, mean=weights.mean, std=weights.std, **extra)
    if not isinstance(tag, (str, os.PathLike)):
        raise ValueError(f"pretrained must be a tag, a path or True, got {pretrained!r}")
    path = os.path.expanduser(os.fspath(tag))
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        valid = ", ".join(list_pretrained(model)) or "none listed"
        raise ValueError(f"pretrained={tag!r} is neither a tag of {model} (valid: {valid}) nor an "
                         f"existing weight file or checkpoint directory")
    if os.path.isdir(path) and _is_checkpoint(path):
        return path  # already in this package's layout: nothing to convert
    source, input_path = detect_source(path)
    key = f"local-{source}-{paths.sha256_files(_files_of(source, input_path))[:16]}"
    return _convert_once(os.path.join(cache_root(), "pretrained", model, key), source, model,
                         input_path)


def _files_of(source: str, path: str) -> list[str]:
    """The files whose bytes identify a weight source (a TF1 checkpoint's index and shards)."""
    if source != "tf1":
        return [path]
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "*.index")) +
                      glob.glob(os.path.join(path, "*.data-*")))
    prefix = path[:-len(".index")] if path.endswith(".index") else path
    return sorted([prefix + ".index"] + glob.glob(prefix + ".data-*"))


PRETRAINED_PREFIX = "pretrained:"


def resolve_init_checkpoint(init_checkpoint: str, model: str) -> str:
    """`train.init_checkpoint` -> a checkpoint directory: "pretrained:TAG" (or "pretrained:"
    for the default tag, or "pretrained:/path/to/file") resolves through `resolve` for the
    config's `model`; anything else is returned as it is."""
    if not init_checkpoint.startswith(PRETRAINED_PREFIX):
        return init_checkpoint
    spec = init_checkpoint[len(PRETRAINED_PREFIX):]
    path = resolve(model, spec or True)
    logging.info("train.init_checkpoint=%s: %s", init_checkpoint, path)
    return path


def load_pretrained(model: str, pretrained: str | bool = True, *, use_ema: bool = True,
                    dtype: str = "float32", conv_impl: str | None = None):
    """`model` with pretrained weights, as `load_checkpoint` returns it (model, preprocessing,
    eval size, class names) for `predict`.

    Args:
      model: a registered name, e.g. "efficientnetv2-s" (`effnetv2_jax.list_models()`).
      pretrained: a tag (`effnetv2_jax.list_pretrained(model)`; True: the default), a local
        weight file (timm `.safetensors`/`.pth`, Keras `.weights.h5`/`.keras`, an official TF1
        checkpoint) or a checkpoint directory (trained or converted).
      use_ema, dtype, conv_impl: as `load_checkpoint`.
    """
    from effnetv2_jax.inference import load_checkpoint

    return load_checkpoint(resolve(model, pretrained), use_ema=use_ema, dtype=dtype,
                           conv_impl=conv_impl)


def create_model(name_or_arch, *, pretrained: str | bool | None = None,
                 num_classes: int | None = None, include_top: bool = True, dtype="float32",
                 conv_impl: str | None = None, remat: bool = False, seed: int = 0,
                 **overrides):
    """`effnetv2_jax.models.create_model`, optionally with pretrained weights.

    Args:
      pretrained: None/False: freshly initialised (as `models.create_model`). A tag, True (the
        default tag), a local weight file or a checkpoint directory: the weights of
        `load_pretrained`. With another `num_classes` than the weights', the classifier is
        re-initialised (with `seed`) for fine-tuning; with `include_top=False` it is dropped.
        `overrides` that change no parameter shape (dropout_rate, survival_prob, ...) apply; one
        that does is an error naming the parameters.
      Others: as `models.create_model`.
    Returns:
      An `EfficientNet`. For prediction with the weights' preprocessing and class names, use
      `load_pretrained`.
    """
    from effnetv2_jax.models.factory import create_model as create_fresh

    if pretrained is None or pretrained is False:
        return create_fresh(name_or_arch, num_classes=num_classes, include_top=include_top,
                            dtype=dtype, conv_impl=conv_impl, remat=remat, seed=seed,
                            **overrides)
    if not isinstance(name_or_arch, str):
        raise ValueError("pretrained weights need a registered model name, got an ArchConfig")
    loaded = load_pretrained(name_or_arch, pretrained, dtype=dtype, conv_impl=conv_impl)
    if (num_classes in (None, loaded.model.num_classes) and include_top and not remat
            and not overrides):
        return loaded.model
    return _rebuild(loaded.model, name_or_arch, num_classes=num_classes or
                    loaded.model.num_classes, include_top=include_top, dtype=dtype,
                    conv_impl=conv_impl, remat=remat, seed=seed, **overrides)


def _rebuild(source, name: str, *, num_classes: int, seed: int, **kwargs):
    """A model built with other arguments, holding `source`'s weights (the classifier fresh
    when its shape differs)."""
    import jax
    import numpy as np
    from flax import nnx

    from effnetv2_jax.models.factory import abstract_model
    from effnetv2_jax.models.layers import Dense

    target = abstract_model(name, num_classes=num_classes, **kwargs)
    graphdef, params, batch_stats = nnx.split(target, nnx.Param, nnx.BatchStat)
    loaded = {jax.tree_util.keystr(k): v for kind in (nnx.Param, nnx.BatchStat)
              for k, v in jax.tree_util.tree_leaves_with_path(
                  nnx.to_pure_dict(nnx.state(source, kind)))}
    head = Dense(target.num_features, num_classes, key=jax.random.key(seed)) \
        if kwargs.get("include_top", True) else None
    problems = []

    def pick(path, value):
        name_ = jax.tree_util.keystr(path)
        found = loaded.get(name_)
        if found is not None and found.shape == value.shape:
            return found
        if name_.startswith("['classifier']") and head is not None:
            return getattr(head, name_.split("'")[3])[...]
        problems.append(f"{name_}: model {value.shape}, weights "
                        f"{'missing' if found is None else found.shape}")
        return np.zeros(value.shape, value.dtype)

    pure = [jax.tree_util.tree_map_with_path(pick, nnx.to_pure_dict(state))
            for state in (params, batch_stats)]
    if problems:
        raise ValueError(f"the pretrained weights do not fit {name} with {kwargs} "
                         f"({len(problems)} arrays): " + "; ".join(problems[:10]))
    nnx.replace_by_pure_dict(params, pure[0])
    nnx.replace_by_pure_dict(batch_stats, pure[1])
    return nnx.merge(graphdef, params, batch_stats)
