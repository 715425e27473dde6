"""Orbax checkpoints of the train state plus JSON metadata; restore skips damaged steps.

Layout: `<workdir>/checkpoints/<step>/{state,metadata}`. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save leaves no step that
looks valid. Saving is asynchronous (training continues while arrays are written). Kept: the
latest `keep_latest` steps plus the best `keep_best` by eval top-1.

Restore walks the steps from the newest down and takes the first that restores; each skipped
step is logged with the reason. If steps exist but none restores, it raises: training never
silently starts again from scratch. Three checks run before a step is accepted:
- its array tree must match the model's (a checkpoint of another model or shape is refused
  naming the first mismatching array, before any data is read);
- Orbax/TensorStore must read every array (truncated, deleted or unreadable files);
- every array must match the checksum saved with it in the metadata: TensorStore catches
  damage to the bytes it reads, but not a wrong value stored as valid data (a faulty writer
  or copy tool, or a store without its own checksums).
A save that fails (disk full, read-only workdir) raises `CheckpointSaveError` naming the step,
the directory and the cause; the steps saved before it are left as they were.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

BEST_METRIC = "ema_top1"


class CheckpointError(RuntimeError):
    """Checkpoints exist in the workdir but none can be restored into this model."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, read-only workdir, ...)."""


def array_name(path) -> str:
    """`params/blocks/1/project_conv/kernel` for a tree path of dict keys or attributes."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """A position-sensitive uint32 checksum of an array's bits (any dtype)."""
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 8:  # -> [..., 2] uint32
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    bits = bits.reshape(-1)
    # Knuth's multiplicative hash of the position: a moved or changed word changes the sum.
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.sum(bits * weights ^ (bits >> 16), dtype=jnp.uint32)


_checksums_jit = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def checksums(tree) -> dict[str, int]:
    """{array name: uint32 checksum} of a tree of arrays, computed where the arrays live."""
    values = jax.device_get(_checksums_jit(tree))
    return {array_name(path): int(value)
            for path, value in jax.tree_util.tree_leaves_with_path(values)}


def first_mismatch(saved_tree, abstract_tree) -> str | None:
    """The first array (in the model's order) whose name, shape or dtype differs between a
    checkpoint's array metadata and the target tree; None when they match."""
    saved = {array_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(saved_tree)}
    wanted = [(array_name(p), leaf)
              for p, leaf in jax.tree_util.tree_leaves_with_path(abstract_tree)]
    for name, leaf in wanted:
        found = saved.get(name)
        if found is None:
            return f"array '{name}' {tuple(leaf.shape)} of this model is not in the checkpoint"
        if tuple(found.shape) != tuple(leaf.shape) or np.dtype(found.dtype) != np.dtype(leaf.dtype):
            return (f"array '{name}' is {tuple(found.shape)} {np.dtype(found.dtype)} in the "
                    f"checkpoint but {tuple(leaf.shape)} {np.dtype(leaf.dtype)} in this model")
    extra = sorted(set(saved) - {name for name, _ in wanted})
    if extra:
        return f"array '{extra[0]}' of the checkpoint is not in this model"
    return None


def _reason(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()] or [""]
    return f"{type(error).__name__}: {lines[0][:300]}"


class Checkpointer:
    """Saves and restores `TrainState` trees with metadata under `directory`."""

    def __init__(self, directory: str, *, keep_latest: int = 3, keep_best: int = 1,
                 async_save: bool = True):
        if keep_latest < 1:
            raise ValueError(f"checkpoint.keep_latest must be >= 1, got {keep_latest}")
        keep = [policies.LatestN(n=keep_latest)]
        if keep_best > 0:
            keep.append(policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=keep_best,
                                       keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=async_save, create=True,
            # Directories are made before save() returns: when that fails (read-only or full
            # disk) save() raises at once; made asynchronously, Orbax's writer threads wait
            # 300 s for a directory signal that never comes and the process hangs on exit.
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        self.directory = directory
        self.manager = ocp.CheckpointManager(directory, options=options,
                                             item_names=("state", "metadata"))

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, metadata: dict[str, Any],
             metrics: dict[str, float] | None = None) -> bool:
        """Starts an asynchronous save of `state` at `step` (a no-op if that step exists).

        The metadata gets the arrays' checksums, verified by `restore`.
        Raises:
          CheckpointSaveError: this save, or the previous asynchronous one, failed to write.
        """
        if step in self.manager.all_steps():
            return False
        metadata = {**metadata, "checksums": checksums(state)}
        try:
            started = self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)),
                metrics=metrics, force=True)
        except Exception as error:  # noqa: BLE001 - re-raised with the step and directory
            raise self._save_error(step, error) from error
        self._last_started = step
        return started

    def _save_error(self, step: int | None, error: BaseException) -> CheckpointSaveError:
        # An asynchronous save's error surfaces at the next save or wait: name its step.
        committed = self.all_steps()
        previous = getattr(self, "_last_started", None)
        failed = previous if previous is not None and previous not in committed else step
        cause = error
        while cause.__cause__ is not None and not isinstance(cause, OSError):
            cause = cause.__cause__
        # The OS's words ("File too large", "Permission denied") from Python or TensorStore.
        os_error = (re.search(r"\[Errno (?P<code>\d+)\] (?P<words>[^:'\"]+)", str(cause))
                    or re.search(r": (?P<words>[A-Za-z ]+) \[os_error_code='(?P<code>\d+)'\]",
                                 str(cause)))
        os_words = ("" if os_error is None else
                    f" ({os_error['words'].strip()}, errno {os_error['code']})")
        code = None if os_error is None else int(os_error["code"])
        fix = {errno.ENOSPC: "Free space on the file system that holds it (or point "
                             "--workdir elsewhere)",
               errno.EDQUOT: "Free space within your disk quota (or point --workdir "
                             "elsewhere)",
               errno.EFBIG: "Raise this process's file-size limit (ulimit -f)",
               errno.EACCES: "Make the workdir writable", errno.EROFS: "Make the workdir "
                             "writable (its file system is read-only)"}.get(
            code, "Check that the disk has space and the workdir is writable")
        return CheckpointSaveError(
            f"could not write checkpoint{'' if failed is None else f' step {failed}'} to "
            f"{self.directory}{os_words}: {_reason(cause)}. {fix}, then run the same command "
            f"again: the steps saved before it ({committed or 'none'}) are intact and the "
            f"run resumes from the newest.")

    def restore(self, abstract_state, step: int | None = None):
        """Restores the newest intact step (or exactly `step`).

        Args:
          abstract_state: the target tree (ShapeDtypeStructs with shardings).
        Returns:
          (state, metadata, step), or None when the directory holds no checkpoint.
        Raises:
          CheckpointError: checkpoints exist but none (or not `step`) restores; the message
            names every step tried and why it failed (e.g. the first mismatching array).
        """
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        failures = []
        for candidate in steps:
            try:
                restored = self._restore_verified(candidate, abstract_state)
            except Exception as error:  # noqa: BLE001 - any damage means "try the previous"
                reason = _reason(error)
                logging.warning("checkpoint step %d in %s cannot be restored, skipping it (%s)",
                                candidate, self.directory, reason)
                failures.append(f"step {candidate}: {reason}")
                continue
            if failures:
                logging.warning("restored step %d after skipping: %s", candidate,
                                "; ".join(failures))
            return restored
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored into this model/config; "
            f"refusing to start from scratch. Tried: " + " | ".join(failures) +
            ". Use another workdir, or fix the config so it matches the checkpoint.")

    def _restore_verified(self, step: int, abstract_state):
        try:
            with ocp.StandardCheckpointer() as reader:
                saved = reader.metadata(
                    os.path.join(self.directory, str(step), "state")).item_metadata
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore below says why
            saved = None
        if saved is not None:
            mismatch = first_mismatch(saved, abstract_state)
            if mismatch:
                raise CheckpointError(f"a different model or shape: {mismatch}")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), metadata=ocp.args.JsonRestore()))
        state, metadata = restored["state"], dict(restored["metadata"] or {})
        expected = metadata.get("checksums")
        if expected is not None:  # checkpoints written before checksums are taken as they are
            got = checksums(state)
            bad = [name for name in got if expected.get(name) != got[name]]
            if bad:
                raise CheckpointError(f"array '{bad[0]}' ({len(bad)} in all) does not match "
                                      f"the checksum saved with it: the data on disk is "
                                      f"corrupted")
        return state, metadata, step

    def wait(self) -> None:
        """Blocks until the asynchronous save finishes; raises `CheckpointSaveError` if it
        failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 - re-raised with the directory
            raise self._save_error(None, error) from error

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def abstract_like(tree, sharding) -> Any:
    """ShapeDtypeStructs of `tree`, placed with `sharding`: an Orbax restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def read_state(step_dir: str, device: jax.Device | None = None) -> Any:
    """Reads the `state` item of one checkpoint step onto one device, whatever mesh or process
    count wrote it (the saved topology is replaced by a single-device target)."""
    path = f"{step_dir}/state"
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.metadata(path).item_metadata
    target_sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
    return checkpointer.restore(path, jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=target_sharding),
        tree))


def warm_start(params, batch_stats, path: str, *, use_ema: bool = True,
               reinit_head: bool = True) -> tuple[Any, Any, list[str]]:
    """Fine-tuning: copies a trained or converted checkpoint's weights into fresh trees.

    Every array must exist in the checkpoint with the same shape, except the classifier when
    `reinit_head` (a new class count): it keeps its fresh initialisation. Anything else that
    differs stops with the names of the arrays.

    Returns:
      (params, batch_stats, notes): the merged trees, and what was re-initialised.
    """
    from effnetv2_jax.inference import load_checkpoint  # noqa: PLC0415 (inference -> models)
    from flax import nnx  # noqa: PLC0415

    source = load_checkpoint(path, use_ema=use_ema).model
    notes, problems = [], []

    def merge(fresh, loaded, kind):
        flat_loaded = {jax.tree_util.keystr(k): v
                       for k, v in jax.tree_util.tree_leaves_with_path(loaded)}

        def pick(path, value):
            name = jax.tree_util.keystr(path)
            found = flat_loaded.get(name)
            if found is not None and found.shape == value.shape:
                # Host arrays: the caller places them on its own mesh.
                return np.asarray(found, value.dtype)
            if name.startswith("['classifier']") and reinit_head:
                notes.append(f"{kind}{name}: re-initialised ({value.shape}, checkpoint has "
                             f"{None if found is None else found.shape})")
                return value
            problems.append(f"{kind}{name}: model {value.shape}, checkpoint "
                            f"{'missing' if found is None else found.shape}")
            return value

        return jax.tree_util.tree_map_with_path(pick, fresh)

    params = merge(params, nnx.to_pure_dict(nnx.state(source, nnx.Param)), "params")
    batch_stats = merge(batch_stats, nnx.to_pure_dict(nnx.state(source, nnx.BatchStat)),
                        "batch_stats")
    if problems:
        raise CheckpointError(f"train.init_checkpoint={path} does not fit this model ("
                              f"{len(problems)} arrays): " + "; ".join(problems[:10]))
    for note in notes:
        logging.warning("warm start from %s: %s", path, note)
    return params, batch_stats, notes
