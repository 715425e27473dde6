"""Orbax checkpoints of the train state plus JSON metadata; restore skips damaged steps.

Layout: `<workdir>/checkpoints/<step>/{state,metadata}`. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save leaves no step that
looks valid. Saving is asynchronous (training continues while arrays are written). Kept: the
latest `keep_latest` steps plus the best `keep_best` by eval top-1.

Restore walks the steps from the newest down and takes the first that restores; each skipped
step is logged with the reason. If steps exist but none restores, it raises: training never
silently starts again from scratch.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

BEST_METRIC = "ema_top1"


class CheckpointError(RuntimeError):
    """Checkpoints exist in the workdir but none can be restored into this model."""


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
            enable_async_checkpointing=async_save, create=True)
        self.directory = directory
        self.manager = ocp.CheckpointManager(directory, options=options,
                                             item_names=("state", "metadata"))

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, metadata: dict[str, Any],
             metrics: dict[str, float] | None = None) -> bool:
        """Starts an asynchronous save of `state` at `step` (a no-op if that step exists)."""
        if step in self.manager.all_steps():
            return False
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)),
            metrics=metrics, force=True)

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
                restored = self.manager.restore(candidate, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    metadata=ocp.args.JsonRestore()))
            except Exception as error:  # noqa: BLE001 - any damage means "try the previous"
                reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                logging.warning("checkpoint step %d in %s cannot be restored, skipping it (%s)",
                                candidate, self.directory, reason)
                failures.append(f"step {candidate}: {reason}")
                continue
            if failures:
                logging.warning("restored step %d after skipping: %s", candidate,
                                "; ".join(failures))
            return restored["state"], dict(restored["metadata"] or {}), candidate
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored into this model/config; "
            f"refusing to start from scratch. Tried: " + " | ".join(failures) +
            ". Use another workdir, or fix the config so it matches the checkpoint.")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
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
