"""Cloud TPU accelerator types: how many chips, hosts and JAX devices a name such as `v4-32` means.

The number in a name counts TensorCores for v3, v4 and v5p (two per chip) and chips for v5e
(`v5litepod-N`) and v6e (one TensorCore per chip). Multi-host slices have 4 chips per host; the
largest single-host shapes are v3-8 / v4-8 / v5p-8 (4 chips) and v5litepod-8 / v6e-8 (8 chips).
Source: the Cloud TPU system-architecture pages for each generation (cloud.google.com/tpu/docs).

A slice with more than one host runs one training process per host; those processes must share
the workdir, so a multi-host run needs a gs:// workdir.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation, as accelerator type names spell it."""

    prefix: str                 # the name before the dash: v4-32 -> "v4"
    counts: str                 # what the number after the dash counts: "cores" | "chips"
    cores_per_chip: int
    devices_per_chip: int       # JAX devices per chip (v4 and v5p: one "megacore" device)
    chips_per_host: int         # on multi-host slices
    max_single_host_chips: int  # the largest slice that is one VM
    runtime_version: str        # the default TPU VM software version (an Ubuntu 22.04 image)
    sizes: tuple[int, ...]      # the numbers this table accepts after the dash


def _powers_of_two(first: int, last: int) -> tuple[int, ...]:
    return tuple(2 ** k for k in range(first.bit_length() - 1, last.bit_length()))


GENERATIONS = {
    g.prefix: g for g in (
        Generation("v3", "cores", 2, 2, 4, 4, "tpu-ubuntu2204-base",
                   (8, 32, 64, 128, 256, 512, 1024, 2048)),
        Generation("v4", "cores", 2, 1, 4, 4, "tpu-ubuntu2204-base", _powers_of_two(8, 4096)),
        Generation("v5litepod", "chips", 1, 1, 4, 8, "v2-alpha-tpuv5-lite",
                   (1, 4, 8, 16, 32, 64, 128, 256)),
        Generation("v5p", "cores", 2, 1, 4, 4, "v2-alpha-tpuv5", _powers_of_two(8, 4096)),
        Generation("v6e", "chips", 1, 1, 4, 8, "v2-alpha-tpuv6e",
                   (1, 4, 8, 16, 32, 64, 128, 256)),
    )
}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice: an accelerator type resolved into chips, hosts and JAX devices."""

    name: str
    generation: Generation
    chips: int
    hosts: int

    @property
    def devices(self) -> int:
        return self.chips * self.generation.devices_per_chip

    @property
    def multi_host(self) -> bool:
        return self.hosts > 1

    def describe(self) -> str:
        return (f"{self.name}: {self.chips} chips on {self.hosts} host(s), {self.devices} JAX "
                f"devices, runtime {self.generation.runtime_version}")


def valid_names() -> list[str]:
    """Every accelerator type this table knows, e.g. for an error message."""
    return [f"{g.prefix}-{n}" for g in GENERATIONS.values() for n in g.sizes]


def parse_accelerator(name: str) -> Slice:
    """`v4-32` -> Slice(chips=16, hosts=4). Raises ValueError naming the valid types."""
    prefix, _, number = name.partition("-")
    generation = GENERATIONS.get(prefix)
    if generation is None or not number.isdigit() or int(number) not in generation.sizes:
        by_generation = "; ".join(
            f"{g.prefix}-{{{','.join(map(str, g.sizes))}}}" for g in GENERATIONS.values())
        raise ValueError(f"unknown accelerator type {name!r} (valid: {by_generation}; "
                         f"add other shapes to launch/accelerators.py)")
    size = int(number)
    chips = size // generation.cores_per_chip if generation.counts == "cores" else size
    hosts = 1 if chips <= generation.max_single_host_chips else chips // generation.chips_per_host
    return Slice(name=name, generation=generation, chips=chips, hosts=hosts)
