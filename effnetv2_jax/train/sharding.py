"""Devices and processes: the mesh, shardings, global batches and BN statistic groups.

Pure data parallelism over one mesh axis, "data": the state is replicated, each batch is split
over the devices. Each process feeds only its own slice; `global_batch` assembles the global
array from the process-local numpy batch.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BN_MODES = ("global", "per_device", "groups")


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
    """Starts `jax.distributed` when there is more than one process (or on Cloud TPU).

    Explicit arguments win (GPU clusters, tests on localhost); on Cloud TPU an argument-free
    `initialize()` discovers the slice, and also gives single-host TPU runs the preemption sync
    point that checkpointing relies on.
    """
    if jax.distributed.is_initialized():
        return
    if coordinator_address:
        if num_processes < 1 or process_id < 0:
            raise ValueError("distributed.num_processes and distributed.process_id must be set "
                             "with distributed.coordinator_address")
        # CPU processes need a collectives backend to talk to each other (GPU/TPU ignore it).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    elif on_cloud_tpu():
        jax.distributed.initialize()
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def on_cloud_tpu() -> bool:
    """Whether this host drives TPU chips: their device files (/dev/accel* on v2-v4, /dev/vfio
    on v5+) exist on TPU VMs and in GKE TPU pods. The TPU_* variables alone do not count: the
    compile mode sets them on machines without a TPU (`topology.quiet_libtpu`)."""
    import glob
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def make_mesh(devices=None) -> Mesh:
    """One "data" axis over `devices` (default: all of this job's), Auto axis type (jit
    propagates shardings itself).

    Devices of several slices (TPU multi-slice: each has a `slice_index`) are laid out by
    `mesh_utils.create_hybrid_device_mesh`: slice-major, so that each slice holds a contiguous
    part of the batch. Data parallelism then crosses the slow data-centre network (DCN) only
    for the gradient all-reduce, and BN statistic groups of up to one slice's devices
    (`bn_groups`) stay within a slice.
    """
    devices = list(jax.devices() if devices is None else devices)
    slices = num_slices(devices)
    if slices == 1:
        return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,),
                             devices=devices)
    from jax.experimental import mesh_utils  # noqa: PLC0415
    per_slice = len(devices) // slices
    grid = mesh_utils.create_hybrid_device_mesh((per_slice,), (slices,), devices)
    return Mesh(grid.reshape(-1), ("data",), axis_types=(AxisType.Auto,))


def num_slices(devices) -> int:
    """Slices the devices span (1 unless they are TPU multi-slice devices)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def platform(mesh: Mesh) -> str:
    """The platform of the mesh's devices ("cpu", "gpu", "tpu"): what its programs compile
    for, whatever the host's default backend is."""
    platforms = {d.platform for d in mesh.devices.flat}
    if len(platforms) != 1:
        raise ValueError(f"the mesh mixes platforms {sorted(platforms)}")
    return platforms.pop()


def process_count(mesh: Mesh) -> int:
    """Processes (hosts) that feed the mesh: `jax.process_count()` for this job's devices,
    the target's hosts for a described topology."""
    return len({d.process_index for d in mesh.devices.flat})


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def check_batch_size(global_batch_size: int, mesh: Mesh,
                     name: str = "train.global_batch_size") -> int:
    """The per-process batch; the global batch must divide over the mesh's devices."""
    devices, processes = mesh.size, process_count(mesh)
    if global_batch_size < 1 or global_batch_size % devices:
        raise ValueError(f"{name}={global_batch_size} does not divide over {devices} devices "
                         f"({processes} processes); use a multiple of {devices}")
    return global_batch_size // processes


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice [global / processes, ...] -> global arrays sharded on "data"."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def prefetch_to_mesh(local_batches: Iterable[dict[str, np.ndarray]], mesh: Mesh, size: int = 2
                     ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, jax.Array]]]:
    """Yields (local batch, global batch on the mesh), keeping `size` batches on the devices
    ahead of the one yielded.

    The copy to the devices is asynchronous, so while the step on batch i runs the next
    batches are already on their way (on a TPU the host-to-device copy then leaves the step's
    critical path). The batches and their order are the input's: prefetching changes when a
    batch is copied, never which. `size=0` copies each batch when it is asked for. Memory: up
    to `size + 1` global batches on the devices, as many local batches on the host.
    """
    if size < 0:
        raise ValueError(f"prefetch size must be >= 0, got {size}")
    queue: collections.deque = collections.deque()
    for local in local_batches:
        queue.append((local, global_batch(local, mesh)))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def bn_groups(mode: str, num_devices: int, group_size: int = 8, slices: int = 1) -> int:
    """Number of BN statistic groups of the global batch for a `train.bn_mode` on a mesh of
    `num_devices` over `slices` TPU slices.

    global: 1 (statistics over the whole batch); per_device: one group per device; groups: one
    group per `group_size` devices (the official TPU code's groups of 8), which must not
    straddle two slices (their statistics would cross the data-centre network every layer).
    """
    if mode == "global":
        return 1
    if mode == "per_device":
        return num_devices
    if mode == "groups":
        if group_size < 1 or num_devices % group_size:
            raise ValueError(f"train.bn_group_size={group_size} must divide the {num_devices} "
                             f"devices")
        if (num_devices // slices) % group_size:
            raise ValueError(f"train.bn_group_size={group_size} must divide the "
                             f"{num_devices // slices} devices of one slice, so that no BN "
                             f"group spans two slices")
        return num_devices // group_size
    raise ValueError(f"unknown train.bn_mode {mode!r} (valid: {', '.join(BN_MODES)})")
