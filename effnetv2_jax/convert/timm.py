"""timm state dicts of the TF-ported models: `tf_efficientnetv2_*`, `tf_efficientnet_*`,
`tf_efficientnet_lite*` (the `tf_` models use TF "SAME" padding and BN epsilon 1e-3, as here).

Files: safetensors (read with `safetensors.numpy`, no torch needed) or a PyTorch pickle (`.pth`,
`.pt`, `.bin`) read with `torch.load(weights_only=True)`, which refuses arbitrary objects. A
training checkpoint that wraps the weights (`state_dict`, `state_dict_ema`, `model`) is
unwrapped, preferring `state_dict_ema`; a `module.` prefix (DataParallel) is stripped.

Names: `conv_stem`, `bn1`; `blocks.<stage>.<i>.<layer>`; `conv_head`, `bn2`, `classifier`. Block
layers by timm block class:

| ours (Flax)          | InvertedResidual | DepthwiseSeparableConv | EdgeResidual | ConvBnAct |
|----------------------|------------------|------------------------|--------------|-----------|
| expand_conv / _bn    | conv_pw / bn1    | -                      | -            | -         |
| depthwise_conv / _bn | conv_dw / bn2    | conv_dw / bn1          | -            | -         |
| fused_conv / _bn     | -                | -                      | conv_exp/bn1 | conv/bn1  |
| se.reduce / .expand  | se.conv_reduce / se.conv_expand (all block types)                  |
| project_conv / _bn   | conv_pwl / bn3   | conv_pw / bn2          | conv_pwl/bn2 | -         |

Layouts: conv [out, in, kh, kw] -> [kh, kw, in, out] (a depthwise [C, 1, k, k] -> [k, k, 1, C]);
Linear [out, in] -> [in, out]; BN weight/bias/running_mean/running_var -> scale/bias/mean/var.
"""

from __future__ import annotations

import os

import numpy as np

from effnetv2_jax._extras import require
from effnetv2_jax.convert.common import (OpenedSource, SourceTensor, linear_to_dense,
                                         oihw_to_hwio)
from effnetv2_jax.convert.layout import Layer, stage_positions
from effnetv2_jax.models.arch import ResolvedArch, ResolvedBlock
from effnetv2_jax.models.block_spec import ConvType

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _block_layer_name(role: str, block: ResolvedBlock) -> str:
    if role == "se_reduce":
        return "se.conv_reduce"
    if role == "se_expand":
        return "se.conv_expand"
    if block.conv_type == ConvType.MBCONV:
        if block.expand_ratio != 1:  # InvertedResidual
            names = {"expand_conv": "conv_pw", "expand_bn": "bn1", "depthwise_conv": "conv_dw",
                     "depthwise_bn": "bn2", "project_conv": "conv_pwl", "project_bn": "bn3"}
        else:  # DepthwiseSeparableConv
            names = {"depthwise_conv": "conv_dw", "depthwise_bn": "bn1", "project_conv": "conv_pw",
                     "project_bn": "bn2"}
    elif block.expand_ratio != 1:  # EdgeResidual
        names = {"fused_conv": "conv_exp", "fused_bn": "bn1", "project_conv": "conv_pwl",
                 "project_bn": "bn2"}
    else:  # ConvBnAct
        names = {"fused_conv": "conv", "fused_bn": "bn1"}
    return names[role]


def state_dict_names(layers: list[Layer], resolved: ResolvedArch) -> dict[str, SourceTensor]:
    """Model leaf -> timm state-dict key and layout change."""
    positions = stage_positions(resolved)
    top = {"stem_conv": "conv_stem", "stem_bn": "bn1", "head_conv": "conv_head", "head_bn": "bn2",
           "classifier": "classifier"}
    mapping = {}
    for layer in layers:
        if layer.block is None:
            module = top[layer.role]
        else:
            stage, j = positions[layer.block.index]
            module = f"blocks.{stage}.{j}.{_block_layer_name(layer.role, layer.block)}"
        for leaf in layer.leaves:
            if layer.kind == "bn":
                mapping[f"{layer.path}.{leaf}"] = SourceTensor(f"{module}.{_BN[leaf]}")
            elif leaf == "bias":
                mapping[f"{layer.path}.{leaf}"] = SourceTensor(f"{module}.bias")
            else:
                transform = linear_to_dense if layer.kind == "dense" else oihw_to_hwio
                mapping[f"{layer.path}.{leaf}"] = SourceTensor(f"{module}.weight", transform)
    return mapping


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (bfloat16 and float16 widen to float32)
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def load_state_dict(path: str, *, use_ema: bool = True) -> tuple[dict[str, np.ndarray], str]:
    """A timm weight file -> (name -> array, which copy was read: "ema", "state_dict", ...)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no timm weight file at {path}")
    if path.endswith(SAFETENSORS_SUFFIXES):
        safetensors_numpy = require("safetensors.numpy", "convert", "reading .safetensors")
        state, which = safetensors_numpy.load_file(path), "state_dict"
    elif path.endswith(PICKLE_SUFFIXES):
        torch = require("torch", "convert",
                        "reading a PyTorch .pth (a .safetensors file needs no torch)")
        import pickle

        # weights_only=True: tensors and plain containers only, never arbitrary pickled code.
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(
                f"{path} holds Python objects besides tensors (e.g. a training checkpoint's "
                f"`args`), and is only read with torch.load(weights_only=True), never as an "
                f"unrestricted pickle. Save the state dict alone (torch.save(ckpt['state_dict'], "
                f"...)) or as .safetensors. torch: {first[:200]}") from None
        which = "state_dict"
        if isinstance(state, dict):
            wrappers = (("state_dict_ema", "ema"), ("state_dict", "state_dict"),
                        ("model", "model")) if use_ema else \
                (("state_dict", "state_dict"), ("model", "model"))
            for key, label in wrappers:
                if isinstance(state.get(key), dict):
                    state, which = state[key], label
                    break
    else:
        raise ValueError(f"unknown timm weight file type {path!r} (valid suffixes: "
                         f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)})")
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: _to_numpy(v) for k, v in state.items()}, which


class _Reader:
    def __init__(self, state: dict[str, np.ndarray]):
        self._state = state

    def names(self):
        return self._state.keys()

    def read(self, name: str) -> np.ndarray:
        return self._state[name]


def open_source(path: str, *, model: str, layers: list[Layer], resolved: ResolvedArch,
                use_ema: bool = True) -> OpenedSource:
    """Opens a timm state dict for the registered `model`."""
    state, which = load_state_dict(path, use_ema=use_ema)
    return OpenedSource(_Reader(state), state_dict_names(layers, resolved),
                        lambda name: name.endswith(".num_batches_tracked"), [path],
                        {"source_weights": which})
