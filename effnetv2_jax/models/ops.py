"""The ops a model's layers compute with, and the one place that picks them.

A layer never asks which backend it runs on: it calls its model's ops object, chosen once per
model from the platform of the devices the model's programs are compiled for (`ops_for`), never
from the host (compiling a TPU program on a CPU machine must not put CPU kernels in it). The
interface is what the XLA:CPU speed layer needs to replace:

  conv(x, kernel, stride)            dense k x k conv, TF "SAME" padding
  depthwise_conv(x, kernel, stride)  depthwise k x k conv, TF "SAME" padding
  spatial_mean(x, *, train)          [batch, height, width, channels] -> [batch, channels] f32
  gate(x, gate)                      squeeze-excite's per-channel gate, x * gate
  mbconv_inference(block, x)         an MBConv block's middle at inference in one pass, or
                                     None: the block then computes it layer by layer

`Ops` is the interface. `XlaOps` is XLA's implementation (the reference; TPU, GPU, exported
programs). The CPU one is `effnetv2_jax.cpu.ops.CpuOps`, which gives the same numbers faster on
XLA:CPU; `ops_for` loads it, and nothing else in `models/` imports the `cpu` package (which
imports nothing of this module, so there is no import cycle). The names users and configs give
(`conv_impl="xla" | "cpu" | None`, config key `model.conv_impl`) map to them here.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp

from effnetv2_jax.models import conv_ops

CONV_IMPLS = ("xla", "cpu")


def default_conv_impl(platform: str | None = None) -> str:
    """``"cpu"`` for programs compiled for CPU devices, else ``"xla"``.

    Args:
      platform: the platform of the devices the model's programs are compiled for ("cpu",
        "gpu", "tpu"); None means JAX's default backend, right for a model used on this host
        (a notebook, `predict`). Training passes its mesh's platform, so that a TPU program
        compiled on a CPU host (`--mode=compile`) gets no CPU kernels.
    """
    return "cpu" if (platform or jax.default_backend()) == "cpu" else "xla"


def resolve_conv_impl(impl: str | None, platform: str | None = None) -> str:
    """Map ``None`` / ``"auto"`` to :func:`default_conv_impl` for `platform`; validate anything
    else. The "cpu" ops call XLA:CPU custom calls, so they are refused for a known non-CPU
    platform."""
    if impl is None or impl == "auto":
        return default_conv_impl(platform)
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; expected one of {CONV_IMPLS} "
                         "(or None / 'auto')")
    if impl == "cpu" and platform not in (None, "cpu"):
        raise ValueError(f"conv impl 'cpu' runs only on CPU devices, and this program is for "
                         f"{platform}; use 'auto' or 'xla' (model.conv_impl)")
    return impl


class Ops(Protocol):
    """What a model's layers compute with (module docstring). Implementations are stateless
    frozen dataclasses, compared by type: a model holds one as a static attribute, so it hashes
    the same in every process and each jitted step compiles once."""

    name: str

    def conv(self, x, kernel, stride: int): ...

    def depthwise_conv(self, x, kernel, stride: int): ...

    def spatial_mean(self, x, *, train: bool): ...

    def gate(self, x, gate): ...

    def mbconv_inference(self, block, x): ...


@dataclasses.dataclass(frozen=True)
class XlaOps:
    """XLA's ops: the reference implementation of `Ops`."""

    name = "xla"

    def conv(self, x, kernel, stride: int):
        """x [batch, height, width, in] -> [batch, ceil(h/stride), ceil(w/stride), out], x's dtype;
        kernel [k, k, in, out]."""
        return conv_ops.conv2d(x, kernel, stride)

    def depthwise_conv(self, x, kernel, stride: int):
        """x [batch, height, width, channels] -> [batch, ceil(h/stride), ceil(w/stride),
        channels], x's dtype; kernel [k, k, 1, channels]."""
        return conv_ops.depthwise_conv2d(x, kernel, stride)

    def spatial_mean(self, x, *, train: bool):
        """[batch, height, width, channels] -> the mean over height and width, [batch, channels]
        float32 (squeeze-excite's and the head's pooling)."""
        del train
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

    def gate(self, x, gate):
        """x [batch, height, width, channels] * gate [batch, channels], per channel."""
        return x * gate[:, None, None, :]

    def mbconv_inference(self, block, x):
        """An MBConv block's expansion, depthwise conv and squeeze-excite at inference in one
        pass ([batch, height, width, in] -> [batch, h/stride, w/stride, mid]), or None where
        these ops have no such pass (here: never)."""
        del block, x
        return None


XLA = XlaOps()


def ops_for(conv_impl: str) -> Ops:
    """The ops for a resolved conv impl ("xla" or "cpu", see `resolve_conv_impl`)."""
    if conv_impl == "xla":
        return XLA
    if conv_impl == "cpu":
        from effnetv2_jax.cpu import ops as cpu_ops  # noqa: PLC0415 - models' one way into cpu/
        return cpu_ops.CPU
    raise ValueError(f"unknown conv impl {conv_impl!r}; expected one of {CONV_IMPLS}")
