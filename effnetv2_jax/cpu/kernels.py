"""Hand-written XLA:CPU kernels (C++, `kernels.cc`) through `jax.ffi`, where XLA's own code is
furthest from the hardware:

- `depthwise_kernel_grad`: the depthwise convolution's weight gradient (XLA reduces over batch
  and pixels with channels minor, far below the machine's speed);
- `materialize`: an identity that makes XLA write the depthwise conv's output once instead of
  recomputing its k*k multiply-adds inside every consumer;
- `spatial_mean`: squeeze-excite's pooling at inference, on all cores (in training it was
  slower, as XLA must then write its operand out);
- `winograd_input`, `winograd_output` and their adjoints: the tile transforms of the
  F(4x4, 3x3) Winograd convolution (`winograd.py`) for dense 3x3 stride-1 convs;
- `mbconv_depthwise_inference`: an MBConv block's BN + activation, depthwise conv, BN +
  activation and squeeze-excite at inference, in one pass (`ops.CpuOps.mbconv_inference`).

docs/performance.md gives the measured effect of each.

The library is built on first use with the system C++ compiler (`CXX`, default g++) against
jaxlib's FFI headers, into `$EFFNETV2_JAX_KERNEL_CACHE` (default `~/.cache/effnetv2_jax/kernels`),
under a name that hashes the source, the jaxlib version, the flags and this CPU's features
(it is built with -march=native); it is written under a temporary name, then renamed, so
concurrent processes never load a half-written file (a cached file that cannot be loaded is
built again). Where there is no compiler, the build fails, or `EFFNETV2_JAX_NATIVE_KERNELS=0`,
`available()` is False (a warning says why, once) and the CPU ops keep their pure-XLA
formulation, which gives the same values. The ops use the kernels only where `enabled()`:
also with a single device, as the custom calls have no SPMD partitioning rule (in a step
sharded over several devices XLA would gather their operands onto every device).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

DEPTHWISE_KERNEL_GRAD = "effnetv2_depthwise_kernel_grad"
MATERIALIZE = "effnetv2_materialize"
SPATIAL_MEAN = "effnetv2_spatial_mean"
WINOGRAD_INPUT = "effnetv2_winograd_input"
WINOGRAD_OUTPUT = "effnetv2_winograd_output"
WINOGRAD_OUTPUT_ADJOINT = "effnetv2_winograd_output_adjoint"
WINOGRAD_INPUT_ADJOINT = "effnetv2_winograd_input_adjoint"
MBCONV_DEPTHWISE_INFERENCE = "effnetv2_mbconv_depthwise_inference"
MBCONV_DEPTHWISE_SE_INFERENCE = "effnetv2_mbconv_depthwise_se_inference"
TARGETS = (DEPTHWISE_KERNEL_GRAD, MATERIALIZE, SPATIAL_MEAN, WINOGRAD_INPUT, WINOGRAD_OUTPUT,
           WINOGRAD_OUTPUT_ADJOINT, WINOGRAD_INPUT_ADJOINT, MBCONV_DEPTHWISE_INFERENCE,
           MBCONV_DEPTHWISE_SE_INFERENCE)
# The activations `mbconv_depthwise_inference` computes, by name (as in models.layers.ACTIVATIONS).
KERNEL_ACTIVATIONS = {None: 0, "silu": 1, "swish": 1, "relu": 2, "relu6": 3}
WINOGRAD_TILE = 4  # output pixels per tile side, F(4x4, 3x3)
WINOGRAD_POINTS = 36  # 6x6 transformed values per tile
SOURCE = Path(__file__).with_name("kernels.cc")
# -fno-trapping-math: GCC then vectorises loops with float compares (the clamps in `Exp`); the
# kernels never rely on floating-point traps.
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fno-trapping-math", "-shared", "-fPIC", "-w")


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path() -> Path:
    """Where the built library for this source, jaxlib, flags and CPU lives."""
    import jaxlib
    key = hashlib.sha256(b"\0".join(
        [SOURCE.read_bytes(), jaxlib.__version__.encode(), " ".join(_FLAGS).encode(),
         platform.machine().encode(), _cpu_features().encode()])).hexdigest()[:16]
    cache = (os.environ.get("EFFNETV2_JAX_KERNEL_CACHE")
             or Path.home() / ".cache" / "effnetv2_jax" / "kernels")
    return Path(cache) / f"cpu_kernels-{key}.so"


def _build(target: Path) -> None:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise FileNotFoundError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so.tmp", delete=False) as tmp:
        temporary = Path(tmp.name)
    try:
        done = subprocess.run([compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE),
                               "-o", str(temporary)], capture_output=True, text=True,
                              check=False, timeout=300)
        if done.returncode:
            raise RuntimeError(f"{compiler} failed ({done.returncode}): {done.stderr[-2000:]}")
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


@functools.cache
def available() -> bool:
    """Builds (once per machine), loads and registers the kernels; False where they cannot be
    (then the callers use XLA code), and on other default backends (where nothing calls them).
    Cached: a process registers the library once (XLA refuses a second registration)."""
    if (os.environ.get("EFFNETV2_JAX_NATIVE_KERNELS", "1") == "0"
            or jax.default_backend() != "cpu"):
        return False
    try:
        path = library_path()
        if not path.exists():
            _build(path)
        try:
            library = ctypes.cdll.LoadLibrary(str(path))
        except OSError:  # a damaged cached file: built again, once
            _build(path)
            library = ctypes.cdll.LoadLibrary(str(path))
        for target in TARGETS:
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)),
                                        platform="cpu")
    except Exception as error:  # noqa: BLE001 - any failure means: use the XLA formulation
        logging.warning("effnetv2_jax's C++ CPU kernels are unavailable (%s: %s); using XLA's "
                        "code for the depthwise conv, squeeze-excite pooling, dense 3x3 "
                        "convs and MBConv inference (same values; a V2-S train step ~2x "
                        "slower on the CPU)",
                        type(error).__name__, error)
        return False
    return True


def enabled() -> bool:
    """Whether the model should call the kernels: `available()`, and a single device in the
    process group (`jax.device_count()`), so no step is sharded. Checked at trace time."""
    return jax.device_count() == 1 and available()


def depthwise_kernel_grad(xp, dy, k: int, stride: int):
    """`dw[i, j, c] = sum_{n,h,w} xp[n, h*s+i, w*s+j, c] * dy[n, h, w, c]`, float32 [k, k, C].

    xp: the padded input [N, Hp, Wp, C]; dy: [N, OH, OW, C] (cast to float32). Needs
    `available()` and the CPU backend."""
    xp, dy = xp.astype(jnp.float32), dy.astype(jnp.float32)
    out = jax.ShapeDtypeStruct((k, k, xp.shape[-1]), jnp.float32)
    return jax.ffi.ffi_call(DEPTHWISE_KERNEL_GRAD, out)(xp, dy, stride=np.int64(stride))


@jax.custom_jvp
def materialize(x):
    """`x`, written to memory once: its producer is computed in one pass, not again inside
    each consumer. Costs nothing (the result aliases the operand). Needs `available()` and
    the CPU backend.

    Why: XLA:CPU fuses a cheap elementwise producer into all its consumers. For the depthwise
    conv's output (9 shifted multiply-adds) those are the BN statistics, the squeeze-excite
    mean and several backward reductions, whose loops run on one thread without vectors.
    Differentiable: the tangent passes through as it is.
    """
    return jax.ffi.ffi_call(MATERIALIZE, jax.ShapeDtypeStruct(x.shape, x.dtype),
                            input_output_aliases={0: 0}, vmap_method="broadcast_all")(x)


@materialize.defjvp
def _materialize_jvp(primals, tangents):
    return materialize(primals[0]), tangents[0]


@jax.custom_jvp
def spatial_mean(x):
    """`x` [B, H, W, C] float32 -> its mean over H and W, [B, C] float32, on XLA's thread pool
    (XLA's own loop for this reduction runs on one thread). Needs `available()` and the CPU
    backend; differentiable (the tangent's mean)."""
    b, h, w, c = x.shape
    return jax.ffi.ffi_call(SPATIAL_MEAN, jax.ShapeDtypeStruct((b, c), jnp.float32),
                            vmap_method="sequential")(x.reshape(b, h * w, c))


@spatial_mean.defjvp
def _spatial_mean_jvp(primals, tangents):
    return spatial_mean(primals[0]), jnp.mean(tangents[0], axis=(1, 2))


def _winograd_points(n: int, h: int, w: int, channels: int):
    tiles = n * -(-h // WINOGRAD_TILE) * -(-w // WINOGRAD_TILE)
    return jax.ShapeDtypeStruct((WINOGRAD_POINTS, tiles, channels), jnp.float32)


def winograd_input(x):
    """`x` [N, H, W, C] float32 -> `V` [36, P, C] float32: each 4x4 output tile's 6x6 input
    window (rows 4t-1 .. 4t+4, zero outside the image) as `B^T d B`; tile
    `p = (n * ceil(H/4) + i) * ceil(W/4) + j`. Linear; not differentiable (see
    `winograd.py`, which uses the adjoints)."""
    return jax.ffi.ffi_call(WINOGRAD_INPUT, _winograd_points(*x.shape),
                            vmap_method="sequential")(x.astype(jnp.float32))


def winograd_output(m, shape):
    """`M` [36, P, K] -> `y` [N, H, W, K] float32 (`shape`), each tile `A^T M A`, cut at the
    image's edge."""
    return jax.ffi.ffi_call(WINOGRAD_OUTPUT, jax.ShapeDtypeStruct(tuple(shape), jnp.float32),
                            vmap_method="sequential")(m.astype(jnp.float32))


def winograd_output_adjoint(dy):
    """The transpose of `winograd_output`: `dy` [N, H, W, K] -> [36, P, K] float32."""
    return jax.ffi.ffi_call(WINOGRAD_OUTPUT_ADJOINT, _winograd_points(*dy.shape),
                            vmap_method="sequential")(dy.astype(jnp.float32))


def winograd_input_adjoint(dv, shape):
    """The transpose of `winograd_input`: `dV` [36, P, C] -> `dx` [N, H, W, C] float32
    (`shape`), the overlapping windows' contributions summed."""
    return jax.ffi.ffi_call(WINOGRAD_INPUT_ADJOINT,
                            jax.ShapeDtypeStruct(tuple(shape), jnp.float32),
                            vmap_method="sequential")(dv.astype(jnp.float32))


def mbconv_depthwise_inference(u, in_scale, in_shift, kernel, out_shift, stride: int,
                               act_in: str | None, act_out: str | None, squeeze_excite=None):
    """`y = act_out(depthwise(act_in(u * in_scale + in_shift), kernel) + out_shift)` with TF
    "SAME" padding, then optionally squeeze-excite's gate on `y`; float32, one pass
    (`kernels.cc`).

    Args:
      u: [N, H, W, C]; in_scale, in_shift, out_shift: [C]; kernel: [k, k, C] (the depthwise
        kernel with the BN scale folded in); act_in, act_out: keys of `KERNEL_ACTIVATIONS`.
      squeeze_excite: None, or (reduce [C, S], reduce_bias [S], expand [S, C], expand_bias [C],
        activation): `y *= sigmoid(act(mean_pixels(y) @ reduce + reduce_bias) @ expand +
        expand_bias)` per image, while the image's y is in cache.
    Returns:
      y [N, ceil(H / stride), ceil(W / stride), C] float32. Not differentiable (inference
      only). Needs `available()` and the CPU backend.
    """
    n, h, w, c = u.shape
    out = jax.ShapeDtypeStruct((n, -(-h // stride), -(-w // stride), c), jnp.float32)
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    args = [f32(u), jnp.stack([f32(in_scale), f32(in_shift)]), f32(kernel), f32(out_shift)]
    attrs = dict(stride=np.int64(stride), act_in=np.int64(KERNEL_ACTIVATIONS[act_in]),
                 act_out=np.int64(KERNEL_ACTIVATIONS[act_out]))
    if squeeze_excite is None:
        return jax.ffi.ffi_call(MBCONV_DEPTHWISE_INFERENCE, out, vmap_method="sequential")(
            *args, **attrs)
    *weights, se_activation = squeeze_excite
    return jax.ffi.ffi_call(MBCONV_DEPTHWISE_SE_INFERENCE, out, vmap_method="sequential")(
        *args, *map(f32, weights), **attrs,
        se_act=np.int64(KERNEL_ACTIVATIONS[se_activation]))
