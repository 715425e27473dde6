"""Cloud TPU slices as data: gcloud accelerator names -> libtpu topologies and chip figures.

`jax.experimental.topologies.get_topology_desc` describes the devices of any TPU slice on a
machine without one (libtpu, the `tpu` extra, compiles for it); the compile mode
(`train/aot.py`) builds the training mesh over those descriptions. This module maps the names
users type (as `gcloud compute tpus tpu-vm create --accelerator-type` takes them: v4-32,
v5litepod-16, v5p-64, v6e-8, v3-8) to the arguments of that call, the way MaxText's
`accelerator_to_spec_map.py` does, and holds each generation's per-device memory, peak bf16
FLOP/s and HBM bandwidth for the fit check and the roofline estimate.

A JAX device is a chip on v4, v5e, v5p and v6e (v4/v5p in "megacore" mode: the chip's two
TensorCores act as one), and a TensorCore on v2 and v3 (two per chip). Figures here are per
JAX device.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation.

    Attributes:
      topology_prefix: libtpu's name ("v5e" in "v5e:2x2"; v5p is "v5").
      name_counts_cores: gcloud's number counts TensorCores (v2-v4, v5p: v4-8 is 4 chips)
        rather than chips (v5e, v6e: v5litepod-4 is 4 chips).
      dims: 2 (2D torus: v2, v3, v5e, v6e) or 3 (v4, v5p).
      chip_config: libtpu's chip config; "megacore" makes one device of a chip's 2 cores.
      devices_per_chip: JAX devices per chip with that chip config.
      hbm_bytes: HBM per JAX device, bytes.
      peak_flops: dense bf16 peak per JAX device, FLOP/s.
      hbm_bytes_per_s: HBM bandwidth per JAX device, bytes/s.
      source: where the three figures come from (the vendor's per-chip figures, divided by
        devices_per_chip).
    """

    topology_prefix: str
    name_counts_cores: bool
    dims: int
    chip_config: str
    devices_per_chip: int
    hbm_bytes: float
    peak_flops: float
    hbm_bytes_per_s: float
    source: str


# Per-chip figures from each generation's Cloud TPU system-architecture page
# (cloud.google.com/tpu/docs/<generation>). HBM sizes are binary (the pages' "16 GB" for v5e is
# 16 GiB: libtpu 0.0.42 reports 15.75 GiB of it usable); rates are decimal.
GENERATIONS: dict[str, Generation] = {
    "v2": Generation("v2", True, 2, "default", 2, 16 * GiB / 2, 45e12 / 2, 600e9 / 2,
                     "cloud.google.com/tpu/docs/v2: 16 GiB HBM, 45 TFLOP/s, 600 GB/s per chip"),
    "v3": Generation("v3", True, 2, "default", 2, 32 * GiB / 2, 123e12 / 2, 900e9 / 2,
                     "cloud.google.com/tpu/docs/v3: 32 GiB HBM, 123 TFLOP/s, 900 GB/s per chip"),
    "v4": Generation("v4", True, 3, "megacore", 1, 32 * GiB, 275e12, 1200e9,
                     "cloud.google.com/tpu/docs/v4: 32 GiB HBM, 275 TFLOP/s, 1200 GB/s per chip"),
    "v5e": Generation("v5e", False, 2, "default", 1, 16 * GiB, 197e12, 819e9,
                      "cloud.google.com/tpu/docs/v5e: 16 GB HBM, 197 TFLOP/s, 819 GB/s per chip"),
    "v5p": Generation("v5", True, 3, "megacore", 1, 95 * GiB, 459e12, 2765e9,
                      "cloud.google.com/tpu/docs/v5p: 95 GB HBM, 459 TFLOP/s, 2765 GB/s per chip"),
    "v6e": Generation("v6e", False, 2, "default", 1, 32 * GiB, 918e12, 1640e9,
                      "cloud.google.com/tpu/docs/v6e: 32 GB HBM, 918 TFLOP/s, 1640 GB/s per chip"),
}
# gcloud's spellings of a generation; libtpu's "v5litepod" is refused, "v5e" works.
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}

# Chips -> torus shape of a slice, as Cloud TPU builds them (MaxText's accelerator table;
# v4-384 and v5p-1536 style non-powers of two are given as explicit topologies instead).
SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
             128: (8, 16), 256: (16, 16), 512: (16, 32), 1024: (32, 32)}
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
             2048: (8, 16, 16), 4096: (16, 16, 16)}


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """A TPU slice: what `get_topology_desc` takes, and the generation's figures.

    Attributes:
      name: as given (gcloud's "v5p-64", or libtpu's "v5e:2x2").
      generation: a key of GENERATIONS.
      topology: libtpu's topology name, "v5e:4x4" (chips per torus dimension).
      chips: chips in one slice.
      chips_per_host_bounds: the chips one host drives, (x, y, z).
    """

    name: str
    generation: str
    topology: str
    chips: int
    chips_per_host_bounds: tuple[int, int, int]

    @property
    def spec(self) -> Generation:
        return GENERATIONS[self.generation]

    @property
    def devices(self) -> int:
        """JAX devices in one slice."""
        return self.chips * self.spec.devices_per_chip

    @property
    def gcloud_name(self) -> str:
        """The name `gcloud --accelerator-type` takes for this slice."""
        spec, prefix = self.spec, {"v5e": "v5litepod"}.get(self.generation, self.generation)
        return f"{prefix}-{self.chips * (2 if spec.name_counts_cores else 1)}"


# JAX's `device_kind` of each generation's devices (libtpu's names).
DEVICE_KINDS = {"TPU v2": "v2", "TPU v3": "v3", "TPU v4": "v4", "TPU v5 lite": "v5e",
                "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p", "TPU v6 lite": "v6e",
                "TPU v6e": "v6e"}


def generation_of_kind(device_kind: str) -> Generation | None:
    """The generation of a JAX device's `device_kind` ("TPU v5 lite"), None if not a TPU."""
    key = DEVICE_KINDS.get(device_kind)
    return GENERATIONS[key] if key else None


def memory_of_kind(device_kind: str) -> float | None:
    """HBM per device, bytes, for a TPU `device_kind`; None for others."""
    generation = generation_of_kind(device_kind)
    return generation.hbm_bytes if generation else None


def _generation(text: str, whole: str) -> str:
    key = ALIASES.get(text, text)
    if key not in GENERATIONS:
        raise ValueError(f"unknown TPU generation {text!r} in {whole!r} (valid: "
                         f"{', '.join([*GENERATIONS, *ALIASES])})")
    return key


def parse(name: str) -> Accelerator:
    """An accelerator from gcloud's name ("v4-8", "v5litepod-16", "v5p-64", "v6e-8", "v3-32")
    or libtpu's topology ("v4:2x2x1", "v5e:2x2"; v5p is "v5p:2x2x1" or libtpu's "v5:2x2x1")."""
    name = name.strip().lower()
    if match := re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", name):
        key = _generation(match[1], name)
        spec = GENERATIONS[key]
        shape = tuple(int(d) for d in match[2].split("x"))
        if len(shape) != spec.dims:
            raise ValueError(f"{name!r}: {key} is a {spec.dims}D torus; give "
                             f"{spec.dims} dimensions, e.g. {key}:{'x'.join(['2'] * spec.dims)}")
        return _accelerator(name, key, shape)
    if match := re.fullmatch(r"([a-z0-9]+)-(\d+)", name):
        key = _generation(match[1], name)
        spec = GENERATIONS[key]
        count = int(match[2])
        chips, odd = divmod(count, 2) if spec.name_counts_cores else (count, 0)
        shapes = SHAPES_3D if spec.dims == 3 else SHAPES_2D
        if odd or chips not in shapes:
            sizes = ", ".join(f"{match[1]}-{c * (2 if spec.name_counts_cores else 1)}"
                              for c in shapes)
            raise ValueError(f"no standard {key} slice is called {name!r} (known: {sizes}); "
                             f"for another shape give the topology, e.g. "
                             f"{key}:{'x'.join(map(str, next(iter(shapes.values()))))}")
        return _accelerator(name, key, shapes[chips])
    raise ValueError(f"cannot read the accelerator {name!r}: give gcloud's name (v4-8, "
                     f"v5litepod-16, v5p-64, v6e-8, v3-8) or a topology (v5e:2x2, v4:2x2x1)")


def _accelerator(name: str, key: str, shape: tuple[int, ...]) -> Accelerator:
    spec = GENERATIONS[key]
    chips = math.prod(shape)
    # A host drives 2x2 chips, except single-host 8-chip v5e/v6e machines (2x4) and v2/v3
    # hosts (4 chips = 8 cores, 2x2).
    if spec.dims == 2 and chips == 8 and key in ("v5e", "v6e"):
        host = (2, 4, 1)
    else:
        padded = (*shape, 1) if len(shape) == 2 else shape
        host = tuple(min(d, b) for d, b in zip(padded, (2, 2, 1)))
    return Accelerator(name, key, f"{spec.topology_prefix}:{'x'.join(map(str, shape))}",
                       chips, host)


def quiet_libtpu() -> None:
    """Tells libtpu this is not a TPU VM before it first loads, so that describing a
    topology neither queries the GCE metadata server (unreachable off Google Cloud) nor prints
    its "could not determine TPU accelerator type / worker hostnames" errors. Only where no
    TPU_* settings exist already (a real TPU VM keeps its own). Off a TPU VM several processes
    may also load libtpu at once (it otherwise takes /tmp/libtpu_lockfile, meant to keep two
    programs off one TPU). For entry points: it sets process environment variables."""
    if any(key in os.environ for key in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")):
        return
    os.environ.update(TPU_SKIP_MDS_QUERY="1", TPU_ACCELERATOR_TYPE="v5litepod-1",
                      TPU_WORKER_HOSTNAMES="localhost", ALLOW_MULTIPLE_LIBTPU_LOAD="1")


def devices(accelerator: Accelerator, slices: int = 1) -> list:
    """Descriptions of the slice's devices (`slices` copies over DCN), for meshes and AOT
    compilation; nothing is allocated. Needs libtpu (`pip install 'effnetv2_jax[tpu]'`)."""
    if slices < 1:
        raise ValueError(f"slices={slices} must be at least 1")
    from jax.experimental import topologies  # noqa: PLC0415 (only the compile mode needs it)
    try:
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=accelerator.topology,
            chip_config_name=accelerator.spec.chip_config,
            chips_per_host_bounds=accelerator.chips_per_host_bounds, num_slices=slices)
    except Exception as error:
        if not libtpu_installed():
            raise RuntimeError(
                f"describing {accelerator.name} needs libtpu, the TPU compiler: pip install "
                f"'effnetv2_jax[tpu]' (Linux x86_64). ({type(error).__name__}: {error})"
            ) from error
        raise
    return list(description.devices)


def libtpu_installed() -> bool:
    """Whether libtpu, the TPU compiler, is importable here."""
    try:
        import libtpu  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True
