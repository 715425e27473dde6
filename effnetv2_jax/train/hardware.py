"""Hardware presets: the overrides that fit a recipe to a machine, composable with any recipe.

A recipe (configs/*.py) says what to train; a hardware preset says how this machine runs it:
global batch, compute dtype, BN statistic groups, eval batch. Select one in the config argument:

    python -m effnetv2_jax.main --config=configs/s_imagenet.py:paper,hw=tpu_v4_32 --workdir=DIR

The preset is applied inside `get_config`, after the recipe, so explicit `--config.key=value`
flags (applied later by ml_collections) still win over it.

Batch rule: `max_global_batch_size` caps the recipe's batch (ImageNet's 4096 becomes 1024 on 8
A100s), it never raises it (a fine-tune keeps its 512), and caps each stage's batch
(`progressive.global_batch_sizes`) alike. When it lowers the batch, the learning
rate follows by itself (`train.base_lr` is per 256 images), epochs stay epochs, and a recipe
given in steps (`train.num_steps`: V1, fine-tunes) gets its steps scaled by old/new batch so it
sees the same number of images. The caps are starting points: the loop compiles every stage
at start-up and stops with the memory it needs if a stage does not fit.
"""

from __future__ import annotations

import ml_collections
from absl import logging

# Dotted config keys -> values; `max_global_batch_size` is the cap described above.
PRESETS: dict[str, dict[str, object]] = {
    # 8 TensorCores x 16 GiB: one BN group over all 8 (the official TPU grouping is 8).
    "tpu_v3_8": {"max_global_batch_size": 1024, "model.dtype": "bfloat16",
                 "train.bn_mode": "global", "eval.global_batch_size": 1024},
    # 32 TensorCores: the official ImageNet batch 4096 with BN groups of 8 (official `hparams.py`).
    "tpu_v3_32": {"max_global_batch_size": 4096, "model.dtype": "bfloat16",
                  "train.bn_mode": "groups", "train.bn_group_size": 8,
                  "eval.global_batch_size": 1024},
    # One v4-8 host: 4 chips x 32 GiB. 256 images per chip in bfloat16 fit every V2-S stage
    # (python -m effnetv2_jax.main ... --mode=compile --topology=v4-8 says so before a launch).
    "tpu_v4_8": {"max_global_batch_size": 1024, "model.dtype": "bfloat16",
                 "train.bn_mode": "global", "eval.global_batch_size": 1024},
    # 16 chips x 32 GiB (JAX sees one device per chip).
    "tpu_v4_32": {"max_global_batch_size": 4096, "model.dtype": "bfloat16",
                  "train.bn_mode": "groups", "train.bn_group_size": 8,
                  "eval.global_batch_size": 1024},
    # 32 chips x 16 GiB.
    "tpu_v5e_32": {"max_global_batch_size": 4096, "model.dtype": "bfloat16",
                   "train.bn_mode": "groups", "train.bn_group_size": 8,
                   "eval.global_batch_size": 1024},
    # One host, 8 GPUs: BN over the whole batch (one group, as a single TPU group of 8).
    "gpu_8xa100": {"max_global_batch_size": 1024, "model.dtype": "bfloat16",
                   "train.bn_mode": "global", "eval.global_batch_size": 512},
    "gpu_1x": {"max_global_batch_size": 128, "model.dtype": "bfloat16",
               "train.bn_mode": "global", "eval.global_batch_size": 128},
    # A laptop: a handful of float32 steps to see the recipe start, train and save; no eval
    # (the full validation set would take hours). --config.mode=train_and_eval brings it back.
    "cpu_debug": {"train.global_batch_size": 8, "train.num_steps": 8, "model.dtype": "float32",
                  "train.bn_mode": "global", "eval.global_batch_size": 8, "mode": "train",
                  "train.log_every_steps": 1, "checkpoint.every_steps": 4,
                  "checkpoint.async_save": False, "data.shuffle_buffer": 256},
}


def names() -> list[str]:
    return sorted(PRESETS)


def apply(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Applies hardware preset `name` to `config` in place and returns it ("" = none)."""
    if not name:
        return config
    if name not in PRESETS:
        raise ValueError(f"unknown hardware preset {name!r} (valid: {', '.join(names())})")
    overrides = dict(PRESETS[name])
    old_batch = config.train.global_batch_size
    cap = overrides.pop("max_global_batch_size", None)
    if cap is not None and old_batch > cap:
        overrides["train.global_batch_size"] = cap
    stage_batches = tuple(config.progressive.global_batch_sizes)
    if cap is not None and stage_batches and max(stage_batches) > cap:  # each stage's too
        overrides["progressive.global_batch_sizes"] = tuple(min(b, cap) for b in stage_batches)
    new_batch = overrides.get("train.global_batch_size", old_batch)
    if new_batch != old_batch and config.train.num_steps and "train.num_steps" not in overrides:
        # Same number of training images: steps scale with old / new batch.
        overrides["train.num_steps"] = round(config.train.num_steps * old_batch / new_batch)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    logging.info("hardware preset %s: %s", name, overrides)
    return config
