"""Keras weight files of `keras.applications.EfficientNetV2{B0..B3,S,M,L}` and
`EfficientNetB0..B7`, read with h5py (Keras itself is not needed).

Three containers:
* Keras 3 `model.save_weights("x.weights.h5")`: tensors are stored by *position*, as
  `layers/<class name>[_<n>]/vars/<i>` with `n` counting the layers of that class in model order
  (`conv2d_17`, `batch_normalization_5`, `depthwise_conv2d_3`, `dense`);
* a Keras 3 `.keras` archive (the same file inside a zip);
* the legacy HDF5 layout of the `weights="imagenet"` downloads and of Keras 2 `save_weights`:
  by layer name, `<layer>/<weight>` (`block2a_expand_conv/kernel:0`).

Layer names (legacy layout; they also label the positional names in messages): `stem_conv`,
`stem_bn`, `block<stage+1><a,b,c...>_<layer>`, `top_conv`, `top_bn`, `predictions`; inside a
block (ours -> Keras):

* MBConv (V1 and V2): expand_conv/_bn -> `expand_conv`/`expand_bn`; depthwise_conv/_bn ->
  `dwconv`/`bn` (V2: `dwconv2`/`bn`); project_conv/_bn -> `project_conv`/`project_bn`;
* V2 fused, expand ratio > 1: fused_conv/_bn -> `expand_conv`/`expand_bn`; project as above;
* V2 fused, expand ratio 1: fused_conv/_bn -> `project_conv`/`project_bn`;
* SE, any block: se.reduce / se.expand -> `se_reduce` / `se_expand`.

Preprocessing layers are not weights of our model and are ignored: EfficientNetB* always has
`Rescaling(1/255)` + `Normalization` (its mean/variance are stored in the file), EfficientNetV2*
has them only with `include_preprocessing=True`. Normalisation is the checkpoint metadata's job
here (official `preprocessing.py`), so build Keras models with `include_preprocessing=False` when you
compare (the V2 parity tests do; the V1 tests feed Keras `255 * x` and our model `x`, since
`weights=None` leaves V1's Normalization at mean 0, variance 1).
The depthwise kernel [k, k, C, 1] becomes [k, k, 1, C]; everything else keeps its layout.
"""

from __future__ import annotations

import io
import os
import re
import zipfile

import numpy as np

from effnetv2_jax._extras import require
from effnetv2_jax.convert.common import OpenedSource, SourceTensor, tf_depthwise_to_flax
from effnetv2_jax.convert.layout import Layer, stage_positions
from effnetv2_jax.models.arch import ResolvedArch, ResolvedBlock
from effnetv2_jax.models.block_spec import ConvType

FAMILIES = ("efficientnet", "efficientnetv2")  # Keras has no EfficientNet-Lite
_BN = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}
# Keras 3 stores each layer's variables in creation order: kernel, bias / gamma, beta,
# moving_mean, moving_variance.
_VAR_INDEX = {"kernel": 0, "bias": 1, "scale": 0, "mean": 2, "var": 3}
_KERAS_CLASS = {"conv": "conv2d", "se_conv": "conv2d", "depthwise": "depthwise_conv2d",
                "bn": "batch_normalization", "dense": "dense"}
_PREPROCESSING = re.compile(r"^(layers/)?(normalization|rescaling)(_\d+)?(/|$)")


def _block_layer_name(role: str, block: ResolvedBlock, v2: bool) -> str:
    if role in ("se_reduce", "se_expand"):
        return role
    if block.conv_type == ConvType.MBCONV:
        return {"expand_conv": "expand_conv", "expand_bn": "expand_bn",
                "depthwise_conv": "dwconv2" if v2 else "dwconv", "depthwise_bn": "bn",
                "project_conv": "project_conv", "project_bn": "project_bn"}[role]
    if block.expand_ratio != 1:
        return {"fused_conv": "expand_conv", "fused_bn": "expand_bn",
                "project_conv": "project_conv", "project_bn": "project_bn"}[role]
    return {"fused_conv": "project_conv", "fused_bn": "project_bn"}[role]


def layer_names(layers: list[Layer], resolved: ResolvedArch, family: str) -> list[str]:
    """The Keras layer name of each of `layers`."""
    if family not in FAMILIES:
        raise ValueError(f"Keras applications have no {family!r} models "
                         f"(valid families: {', '.join(FAMILIES)})")
    positions = stage_positions(resolved)
    top = {"stem_conv": "stem_conv", "stem_bn": "stem_bn", "head_conv": "top_conv",
           "head_bn": "top_bn", "classifier": "predictions"}
    names = []
    for layer in layers:
        if layer.block is None:
            names.append(top[layer.role])
        else:
            stage, j = positions[layer.block.index]
            if j >= 26:
                raise ValueError(f"stage {stage} has more than 26 blocks: Keras names blocks "
                                 f"with one letter and has no such model")
            role = _block_layer_name(layer.role, layer.block, family == "efficientnetv2")
            names.append(f"block{stage + 1}{chr(ord('a') + j)}_{role}")
    return names


def _transform(layer: Layer):
    return tf_depthwise_to_flax if layer.kind == "depthwise" else (lambda x: x)


def legacy_mapping(layers, resolved, family) -> dict[str, SourceTensor]:
    """Model leaf -> `<layer>/<weight>` of a legacy (by-name) HDF5 file."""
    mapping = {}
    for layer, name in zip(layers, layer_names(layers, resolved, family)):
        for leaf in layer.leaves:
            var = _BN[leaf] if layer.kind == "bn" else leaf
            mapping[f"{layer.path}.{leaf}"] = SourceTensor(f"{name}/{var}", _transform(layer))
    return mapping


def positional_mapping(layers, resolved, family) -> dict[str, SourceTensor]:
    """Model leaf -> `layers/<class>[_n]/vars/<i>` of a Keras 3 weights file.

    `n` counts the layers of one class in model order; the preprocessing layers of
    EfficientNetB* (`normalization`, `rescaling`) have classes of their own, so they shift
    nothing here."""
    mapping, counters = {}, {}
    for layer, name in zip(layers, layer_names(layers, resolved, family)):
        cls = _KERAS_CLASS[layer.kind]
        n = counters.get(cls, 0)
        counters[cls] = n + 1
        group = f"layers/{cls if n == 0 else f'{cls}_{n}'}/vars"
        for leaf in layer.leaves:
            index = _VAR_INDEX[leaf]
            var = _BN[leaf] if layer.kind == "bn" else leaf
            mapping[f"{layer.path}.{leaf}"] = SourceTensor(f"{group}/{index}", _transform(layer),
                                                           label=f"{name}/{var}")
    return mapping


class _H5Reader:
    """All datasets of an HDF5 file by path (Keras 3) or by `<layer>/<weight>` (legacy)."""

    def __init__(self, file_or_bytes):
        h5py = require("h5py", "convert", "reading a Keras weight file")

        self._arrays: dict[str, np.ndarray] = {}
        with h5py.File(file_or_bytes, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            self.legacy = "layer_names" in root.attrs
            if self.legacy:
                for layer in _strings(root.attrs["layer_names"]):
                    group = root[layer]
                    for weight in _strings(group.attrs.get("weight_names", [])):
                        # Keras 2 names end in ":0"; older files call the depthwise kernel
                        # "depthwise_kernel" (Keras 3: "kernel").
                        base = weight.split("/")[-1].split(":")[0]
                        base = "kernel" if base == "depthwise_kernel" else base
                        self._arrays[f"{layer}/{base}"] = np.asarray(group[weight])
            else:
                f.visititems(lambda name, obj: self._arrays.__setitem__(name, np.asarray(obj))
                             if isinstance(obj, h5py.Dataset) else None)

    def names(self):
        return self._arrays.keys()

    def read(self, name: str) -> np.ndarray:
        return self._arrays[name]


def _strings(values) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def open_file(path: str) -> _H5Reader:
    """A `.weights.h5`, legacy `.h5` or `.keras` file -> its tensors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no Keras weight file at {path}")
    if zipfile.is_zipfile(path):  # a .keras archive
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise ValueError(f"{path} is a zip archive without model.weights.h5; "
                                 f"not a Keras 3 .keras file")
            return _H5Reader(io.BytesIO(archive.read("model.weights.h5")))
    return _H5Reader(path)


def open_source(path: str, *, model: str, layers: list[Layer], resolved: ResolvedArch,
                family: str, use_ema: bool = True) -> OpenedSource:
    """Opens a Keras weight file for the registered `model` of `family`. Keras files hold one
    copy of the weights, so `use_ema` changes nothing."""
    reader = open_file(path)
    if reader.legacy:
        mapping, layout = legacy_mapping(layers, resolved, family), "legacy h5 (by name)"
    else:
        mapping, layout = positional_mapping(layers, resolved, family), "keras 3 (by position)"
    return OpenedSource(reader, mapping, lambda name: bool(_PREPROCESSING.match(name)), [path],
                        {"source_weights": "weights", "source_layout": layout})
