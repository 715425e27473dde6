"""Writes converted weights in the layout of a training checkpoint, so `load_checkpoint` (and
`train.checkpoint.read_state`) read them like a trained one.

Layout (as `effnetv2_jax/train/checkpoint.py`): `<output>/checkpoints/0/` with two Orbax items,
`state` = {step: 0, params, batch_stats, ema_params, ema_batch_stats, nonfinite_step: -1} (no
optimizer state; the EMA copies equal the weights) and `metadata` (JSON). `params` and
`batch_stats` are `nnx.to_pure_dict` trees of the model's Param and BatchStat state. Without an
optimizer state, a training run does not resume from it; it is a starting point for inference
and (through `load_checkpoint`) for fine-tuning.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from effnetv2_jax import paths
from effnetv2_jax.models.variants import Variant

CHECKPOINTS_SUBDIR = "checkpoints"
ITEMS = ("state", "metadata")


def eval_crop(eval_size: int, squash_min_size: int | None) -> str:
    """The eval crop mode at `eval_size`: "squash" (whole image resized) or "center"."""
    return "squash" if squash_min_size is not None and eval_size >= squash_min_size else "center"


def checkpoint_metadata(variant: Variant, *, num_classes: int, class_names: list[str],
                        mean=None, std=None, **extra: Any) -> dict[str, Any]:
    """The metadata a training run writes, filled from the registered variant.

    Keys: model, num_classes, model_overrides, train_size, eval_size, preprocessing (mean, std,
    interpolation, crop_padding, squash_min_size, train_crop), eval_crop, class_names, config,
    plus `extra` (source, source_sha256, ...). `mean` / `std` (pixel units) override the
    variant's normalisation, e.g. for AdvProp weights (127.5 / 127.5).
    """
    pre = variant.preprocessing
    preprocessing = {"mean": list(mean or pre.mean), "std": list(std or pre.std),
                     "interpolation": pre.interpolation, "crop_padding": pre.crop_padding,
                     "squash_min_size": pre.squash_min_size, "train_crop": None}
    return {"model": variant.name, "num_classes": num_classes, "model_overrides": {},
            "train_size": variant.train_size, "eval_size": variant.eval_size,
            "preprocessing": preprocessing,
            "eval_crop": eval_crop(variant.eval_size, pre.squash_min_size),
            "class_names": list(class_names), "config": None, "step": 0, **extra}


def check_output(output_dir: str, overwrite: bool = False) -> str:
    """`<output_dir>/checkpoints` (local or gs://...), after checking it holds no checkpoints
    (unless `overwrite`).

    Raises FileExistsError naming what is there."""
    directory = paths.resolve(output_dir) / CHECKPOINTS_SUBDIR
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if found and not overwrite:
        raise FileExistsError(f"{directory} already holds checkpoints ({found}); pass "
                              f"--overwrite to replace them or choose another --output")
    return os.fspath(directory)


def write_checkpoint(output_dir: str, params, batch_stats, metadata: dict[str, Any], *,
                     overwrite: bool = False) -> str:
    """Writes step 0 under `<output_dir>/checkpoints/` (local or gs://...); returns the step
    directory.

    params, batch_stats: pure-dict trees of numpy arrays (float32).
    Raises FileExistsError if the directory already holds checkpoints and not `overwrite`.
    """
    directory = check_output(output_dir, overwrite)
    paths.remove_tree(directory)
    state = {"step": np.asarray(0, np.int32), "params": params, "batch_stats": batch_stats,
             "ema_params": params, "ema_batch_stats": batch_stats,
             "nonfinite_step": np.asarray(-1, np.int32)}
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(directory, options=options, item_names=ITEMS) as manager:
        manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                metadata=ocp.args.JsonSave(metadata)))
        manager.wait_until_finished()
    return f"{directory}/0"


def write_model(model, output_dir: str, *, model_name: str, class_names=(),
                overwrite: bool = False, **extra: Any) -> str:
    """Writes a built `EfficientNet` (any weights, e.g. freshly initialised) in the checkpoint
    layout, with the registered variant's metadata; returns the step directory."""
    from flax import nnx

    from effnetv2_jax.models.variants import get_variant

    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    to_numpy = lambda tree: jax.tree.map(np.asarray, nnx.to_pure_dict(tree))  # noqa: E731
    metadata = checkpoint_metadata(get_variant(model_name), num_classes=model.num_classes,
                                   class_names=list(class_names), **extra)
    return write_checkpoint(output_dir, to_numpy(params), to_numpy(batch_stats), metadata,
                            overwrite=overwrite)


def random_weights(abstract_model, seed: int = 0) -> tuple[dict, dict]:
    """Random, non-degenerate (params, batch_stats) pure dicts for an abstract model, filled by
    numpy (no initialiser compiles, instant even for large variants): kernels N(0, 1/fan_in)
    with fan_in = every axis but the last, BN statistics U(0.5, 1.5), so activations and
    probabilities are not flat. For benchmarks and tests of checkpoint consumers."""
    from flax import nnx  # noqa: PLC0415 (the writer itself needs no flax)

    _, params, batch_stats = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)
    rng = np.random.RandomState(seed)
    params = jax.tree.map(
        lambda x: (rng.normal(0, 1, x.shape) / np.sqrt(max(1, np.prod(x.shape[:-1]))))
        .astype(np.float32), nnx.to_pure_dict(params))
    batch_stats = jax.tree.map(lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32),
                               nnx.to_pure_dict(batch_stats))
    return params, batch_stats
