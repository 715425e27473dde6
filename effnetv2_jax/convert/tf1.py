"""Official TF1 name-based checkpoints (V1, V2 and Lite), read with `tf.train.load_checkpoint`.

Naming (the official code's layer scopes, `effnetv2_model.py`), with `<p>` the model name (`efficientnetv2-s`, `efficientnet-b0`,
`efficientnet-lite0`):

    <p>/stem/conv2d/kernel                       <p>/stem/tpu_batch_normalization/{gamma,beta,
    <p>/blocks_<i>/conv2d[_n]/kernel                   moving_mean,moving_variance}
    <p>/blocks_<i>/depthwise_conv2d/depthwise_kernel   [k, k, C, 1] -> Flax [k, k, 1, C]
    <p>/blocks_<i>/tpu_batch_normalization[_n]/...
    <p>/blocks_<i>/se/conv2d/{kernel,bias}, se/conv2d_1/{kernel,bias}
    <p>/head/conv2d/kernel, <p>/head/tpu_batch_normalization/..., <p>/head/dense/{kernel,bias}

Inside a block, `conv2d`, `conv2d_1`, ... and `tpu_batch_normalization`, `_1`, `_2` count layers in
creation order; `blocks_<i>` uses the global block index. Every variable may also exist as
`<name>/ExponentialMovingAverage`; like the official fine-tune loader (and the Keras and PyTorch
ports), the converter prefers the EMA copy and falls back to the raw one. Optimizer slots
(`<name>/RMSProp`, `/RMSProp_1`, `/Momentum`, `/Adam`, `/Adam_1`) and `global_step` are ignored.
"""

from __future__ import annotations

import glob
import os
import shutil
import tarfile
import tempfile
import weakref

import numpy as np

from effnetv2_jax._extras import require
from effnetv2_jax.convert.common import (ConversionError, OpenedSource, SourceTensor,
                                         tf_depthwise_to_flax)
from effnetv2_jax.convert.layout import Layer

EMA_SUFFIX = "/ExponentialMovingAverage"
IGNORED_SUFFIXES = (EMA_SUFFIX, "/RMSProp", "/RMSProp_1", "/Momentum", "/Adam", "/Adam_1")
IGNORED_NAMES = ("global_step",)
_BN = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}


def _numbered(base: str, n: int) -> str:
    return base if n == 0 else f"{base}_{n}"


def variable_names(layers: list[Layer], prefix: str) -> dict[str, tuple[str, bool]]:
    """Model leaf -> (raw TF variable name, needs the depthwise transpose)."""
    names: dict[str, tuple[str, bool]] = {}
    counters: dict[str, dict[str, int]] = {}  # per scope: layer base name -> layers so far
    for layer in layers:
        if layer.block is not None:
            scope = f"{prefix}/blocks_{layer.block.index}"
        elif layer.role in ("head_conv", "head_bn", "classifier"):
            scope = f"{prefix}/head"
        else:
            scope = f"{prefix}/stem"
        if layer.kind == "se_conv":
            tf_layer = "se/conv2d_1" if layer.role == "se_expand" else "se/conv2d"
        elif layer.kind == "dense":
            tf_layer = "dense"
        else:
            base = {"conv": "conv2d", "depthwise": "depthwise_conv2d",
                    "bn": "tpu_batch_normalization"}[layer.kind]
            scope_counters = counters.setdefault(scope, {})
            n = scope_counters.get(base, 0)
            scope_counters[base] = n + 1
            tf_layer = _numbered(base, n)
        for leaf in layer.leaves:
            if layer.kind == "bn":
                var = _BN[leaf]
            elif layer.kind == "depthwise":
                var = "depthwise_kernel"
            else:
                var = leaf
            names[f"{layer.path}.{leaf}"] = (f"{scope}/{tf_layer}/{var}", layer.kind == "depthwise")
    return names


ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _find_checkpoint_dir(root: str) -> str:
    """The directory under `root` holding the checkpoint (the official archives unpack into
    `<model>/`)."""
    for directory, _, files in sorted(os.walk(root)):
        if "checkpoint" in files or any(f.endswith(".index") for f in files):
            return directory
    raise FileNotFoundError("the archive holds no TF checkpoint (no 'checkpoint' or '*.index')")


def checkpoint_prefix(path: str) -> str:
    """A checkpoint directory, prefix, or `<prefix>.index` -> the prefix to read."""
    if os.path.isdir(path):
        tf = require("tensorflow", "data", "reading a TF1 checkpoint")

        # The `checkpoint` state file may hold absolute paths from where it was written (an
        # unpacked archive's point elsewhere): only its file name is used, inside `path`.
        state = tf.train.get_checkpoint_state(path)
        if state is not None and state.model_checkpoint_path:
            local = os.path.join(path, os.path.basename(state.model_checkpoint_path))
            if os.path.exists(local + ".index"):
                return local
        indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
        if len(indexes) == 1:
            return indexes[0][:-len(".index")]
        raise FileNotFoundError(f"{path} holds no TF checkpoint (no 'checkpoint' file and "
                                f"{len(indexes)} '*.index' files; pass the checkpoint prefix)")
    if path.endswith(".index"):
        path = path[:-len(".index")]
    if not os.path.exists(path + ".index"):
        raise FileNotFoundError(f"no TF checkpoint at {path} (expected {path}.index)")
    return path


def checkpoint_files(prefix: str) -> list[str]:
    """The files a checkpoint prefix consists of (index, then data shards), for checksums."""
    return [prefix + ".index"] + sorted(glob.glob(glob.escape(prefix) + ".data-*"))


class _Reader:
    def __init__(self, prefix: str):
        tf = require("tensorflow", "data", "reading a TF1 checkpoint")

        self._reader = tf.train.load_checkpoint(prefix)
        self._names = set(self._reader.get_variable_to_shape_map())

    def names(self):
        return self._names

    def read(self, name: str) -> np.ndarray:
        return np.asarray(self._reader.get_tensor(name))


def _strip_suffixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for suffix in IGNORED_SUFFIXES:
            if name.endswith(suffix):
                name, changed = name[:-len(suffix)], True
    return name


def open_source(path: str, *, model: str, layers: list[Layer], use_ema: bool = True,
                prefix: str | None = None) -> OpenedSource:
    """Opens a TF1 checkpoint for the registered `model`: a directory, a prefix, an `.index`
    file, or an official `.tar.gz` / `.tgz` archive (unpacked to a temporary directory that
    lives as long as the reader). `prefix` overrides the variable scope (default: model name)."""
    archive = None
    if path.endswith(ARCHIVE_SUFFIXES) and os.path.isfile(path):
        archive = tempfile.mkdtemp(prefix="effnetv2_tf1_")
        try:
            with tarfile.open(path) as tar:
                tar.extractall(archive, filter="data")  # no absolute paths, links out, devices
            ckpt = checkpoint_prefix(_find_checkpoint_dir(archive))
            reader = _Reader(ckpt)
        except BaseException:
            shutil.rmtree(archive, ignore_errors=True)
            raise
        weakref.finalize(reader, shutil.rmtree, archive, ignore_errors=True)
    else:
        ckpt = checkpoint_prefix(path)
        reader = _Reader(ckpt)
    prefix = prefix or model
    if not any(n.startswith(prefix + "/") for n in reader.names()):
        scopes = sorted({n.split("/", 1)[0] for n in reader.names()})
        raise ConversionError(f"no variables under '{prefix}/' in {ckpt}; its top-level scopes "
                              f"are {scopes}. Pick the matching --model (or pass --tf1-prefix).")
    raw = variable_names(layers, prefix)
    mapping, ema_count = {}, 0
    for leaf, (name, depthwise) in raw.items():
        if use_ema and name + EMA_SUFFIX in reader.names():
            name, ema_count = name + EMA_SUFFIX, ema_count + 1
        transform = tf_depthwise_to_flax if depthwise else (lambda x: x)
        mapping[leaf] = SourceTensor(name, transform)
    raw_names = {name for name, _ in raw.values()}

    def ignored(name: str) -> bool:
        return name in IGNORED_NAMES or _strip_suffixes(name) in raw_names

    if ema_count == len(mapping):
        weights = "ema"
    elif ema_count == 0:
        weights = "raw"
    else:
        weights = f"mixed: {ema_count} EMA, {len(mapping) - ema_count} raw"
    files = [path] if archive is not None else checkpoint_files(ckpt)
    return OpenedSource(reader, mapping, ignored, files,
                        {"source_weights": weights, "source_prefix": prefix})
