"""A training run's setup as library functions: what the loop, the compile mode (`aot.py`),
NAS and scaling share.

`plan(config, devices)` describes a run for a set of devices without touching them: the mesh,
the model's graph and abstract state (shapes, dtypes, shardings), optimizer, schedule and
progressive stages. Nothing is allocated and no data is read beyond its metadata, so the same
plan serves a TPU slice described on a CPU host. `setup(config, workdir)` plans for this job's
devices, then initialises the parameters, restores the newest checkpoint and returns the run
the loop trains.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import optax
from absl import logging
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from effnetv2_jax import data, paths
from effnetv2_jax.models.factory import abstract_model, create_model, resolve_model_args
from effnetv2_jax.models.ops import resolve_conv_impl
from effnetv2_jax.models.variants import Variant
from effnetv2_jax.preprocessing import Preprocessing
from effnetv2_jax.train import inputs, progressive, sharding
from effnetv2_jax.train.checkpoint import Checkpointer, abstract_like, warm_start
from effnetv2_jax.train.config import validate
from effnetv2_jax.train.optim import learning_rate_schedule, make_optimizer
from effnetv2_jax.train.state import TrainState, create_train_state, split_model


@dataclasses.dataclass
class Run:
    """What the loop, evaluation and the compile mode share once planned or set up.

    `state` holds arrays after `setup`, and ShapeDtypeStructs (with their shardings) after
    `plan`, where `checkpointer` is None.
    """

    config: ml_collections.ConfigDict
    variant: Variant
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    state: TrainState
    tx: optax.GradientTransformation
    learning_rate: optax.Schedule
    info: data.DatasetInfo
    data_config: data.DataConfig
    preprocess: Preprocessing
    stages: list[progressive.Stage]
    total_steps: int
    eval_size: int
    model_kwargs: dict[str, Any]     # create_model(config.model.name, **model_kwargs)
    metadata: dict
    checkpointer: Checkpointer | None = None
    compile_cache_dir: str | None = None  # also holds the exported steps (exported_steps.py)


def model_overrides(config) -> dict:
    """The config's architecture overrides of its variant (what `create_model`,
    `count_params` and `count_flops` take as keywords); unset values are left out."""
    m = config.model
    overrides = {"block_strings": tuple(m.block_strings) or None, "width": m.width or None,
                 "depth": m.depth or None, "feature_size": m.feature_size or None,
                 "survival_prob": None if m.survival_prob < 0 else m.survival_prob,
                 "bn_momentum": None if m.bn_momentum < 0 else m.bn_momentum}
    return {k: v for k, v in overrides.items() if v is not None}


def stage_batch_sizes(config) -> tuple[int, ...]:
    """Each progressive stage's global batch: `progressive.global_batch_sizes`, or
    `train.global_batch_size` for all."""
    return (tuple(config.progressive.global_batch_sizes)
            or (config.train.global_batch_size,) * config.progressive.num_stages)


def stage_schedule(config, variant) -> progressive.Schedule:
    """The first and last stage's settings: the config's own ("custom") or a preset's."""
    p = config.progressive
    if p.preset == "custom":
        return progressive.Schedule(*(tuple(p[k]) for k in (
            "image_size", "randaug_magnitude", "mixup_alpha", "cutmix_alpha", "dropout_rate")))
    return progressive.preset(variant.name, p.preset, p.num_stages)


def plan(config: ml_collections.ConfigDict, devices=None,
         info: data.DatasetInfo | None = None) -> Run:
    """The run `config` describes on `devices` (default: this job's), abstract.

    Args:
      config: a validated-or-not training config (validated here).
      devices: the mesh's devices: `jax.devices()`, or a TPU slice's descriptions
        (`topology.devices`). The conv implementation follows their platform, never the
        host's (a TPU program gets no XLA:CPU kernels).
      info: the dataset's metadata; None reads it (`data.dataset_info`).
    Returns:
      A `Run` whose state is ShapeDtypeStructs replicated over the mesh; no checkpointer.
    """
    validate(config)
    mesh = sharding.make_mesh(devices)
    batch = config.train.global_batch_size
    sharding.check_batch_size(batch, mesh)
    batches = stage_batch_sizes(config)
    for i, stage_batch in enumerate(config.progressive.global_batch_sizes):
        sharding.check_batch_size(stage_batch, mesh, f"stage {i}'s batch "
                                                     f"progressive.global_batch_sizes[{i}]")
    eval_batch = config.eval.global_batch_size or batch
    sharding.check_batch_size(eval_batch, mesh, "eval.global_batch_size")
    overrides = model_overrides(config)
    _, variant = resolve_model_args(config.model.name, overrides)

    data_config = inputs.data_config(config)
    info = info or data.dataset_info(data_config)
    num_classes = config.model.num_classes or info.num_classes
    if num_classes != info.num_classes:
        # The pipeline's one-hot labels have the data's width; the head would not match.
        raise ValueError(f"config.model.num_classes={num_classes} but the data has "
                         f"{info.num_classes} classes; set it to 0 (the data's count) or "
                         f"{info.num_classes}")
    # Epochs and the lr schedule are measured at train.global_batch_size; stages at other
    # batches are placed by the examples they see (train/progressive.py).
    steps_per_epoch = info.num_train_examples / batch
    ends = ()
    if len(set(batches)) > 1 and not config.train.num_steps:
        ends = progressive.epoch_ends(config.train.num_epochs, info.num_train_examples, batches)
    total_steps = (config.train.num_steps or (ends[-1] if ends else
                                              int(config.train.num_epochs * steps_per_epoch)))
    stages = progressive.make_stages(stage_schedule(config, variant),
                                     config.progressive.num_stages, total_steps,
                                     batch_sizes=batches, ends=ends)

    conv_impl = resolve_conv_impl(config.model.conv_impl, sharding.platform(mesh))
    model_kwargs = dict(num_classes=num_classes, dtype=config.model.dtype, conv_impl=conv_impl,
                        seed=config.seed, remat=config.model.remat, **overrides)
    model = abstract_model(config.model.name, **model_kwargs)
    model.set_bn_groups(sharding.bn_groups(config.train.bn_mode, mesh.size,
                                           config.train.bn_group_size,
                                           sharding.num_slices(mesh.devices.flat)))
    graphdef, params, batch_stats = split_model(model)
    learning_rate = learning_rate_schedule(
        base_lr=config.train.base_lr, global_batch_size=batch, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, schedule=config.train.lr_schedule,
        warmup_epochs=config.train.warmup_epochs, decay_epochs=config.train.decay_epochs,
        decay_factor=config.train.decay_factor, min_lr=config.train.min_lr,
        stages=stages if len(set(batches)) > 1 else None)
    tx = make_optimizer(learning_rate=learning_rate, optimizer=config.train.optimizer,
                        weight_decay=config.train.weight_decay,
                        grad_clip_norm=config.train.grad_clip_norm)
    state = abstract_like(jax.eval_shape(lambda p, s: create_train_state(p, s, tx), params,
                                         batch_stats), sharding.replicated(mesh))
    pre = inputs.preprocess_for(config, variant)
    eval_size = config.eval.image_size or variant.eval_size
    metadata = {"model": config.model.name, "num_classes": num_classes,
                "model_overrides": {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in overrides.items()},
                "train_size": stages[-1].image_size, "eval_size": eval_size,
                "preprocessing": dataclasses.asdict(pre), "class_names": list(info.class_names),
                "config": config.to_json()}
    return Run(config=config, variant=variant, mesh=mesh, graphdef=graphdef, state=state, tx=tx,
               learning_rate=learning_rate, info=info, data_config=data_config,
               preprocess=pre, stages=stages, total_steps=total_steps, eval_size=eval_size,
               model_kwargs=model_kwargs, metadata=metadata)


def _enable_compile_cache(config, workdir: str) -> str | None:
    """JAX's persistent compilation cache in the workdir (or `checkpoint.compile_cache_dir`,
    e.g. a bucket shared by a pod), so a restarted run does not compile again. Returns the
    folder (None when the config says "none"); the exported steps live there too."""
    path = config.checkpoint.compile_cache_dir
    if path == "none":
        return None
    path = os.fspath(paths.resolve(path) if path else paths.resolve(workdir) / "compile_cache")
    if jax.config.jax_compilation_cache_dir != path:
        # reset_cache makes the new directory take effect even after earlier compilations
        # in this process (a notebook, a test session).
        compilation_cache.reset_cache()
        compilation_cache.set_cache_dir(path)
    return path


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Everything up to (and including) restoring the latest checkpoint; no compilation."""
    validate(config)
    workdir = os.fspath(paths.resolve(workdir))  # gs://... as it is; a local folder absolute
    sharding.initialize_distributed(config.distributed.coordinator_address,
                                    config.distributed.num_processes,
                                    config.distributed.process_id)
    compile_cache_dir = _enable_compile_cache(config, workdir)
    run = plan(config)
    model = create_model(config.model.name, **run.model_kwargs)
    model.set_bn_groups(sharding.bn_groups(config.train.bn_mode, run.mesh.size,
                                           config.train.bn_group_size,
                                           sharding.num_slices(run.mesh.devices.flat)))
    graphdef, params, batch_stats = split_model(model)
    checkpointer = Checkpointer(os.fspath(paths.resolve(workdir) / "checkpoints"),
                                keep_latest=config.checkpoint.keep_latest,
                                keep_best=config.checkpoint.keep_best,
                                async_save=config.checkpoint.async_save)
    if config.train.init_checkpoint and checkpointer.latest_step() is None:
        # Only a fresh run warm-starts; a restarted one resumes its own checkpoint.
        from effnetv2_jax.pretrained.load import resolve_init_checkpoint  # noqa: PLC0415

        init = resolve_init_checkpoint(config.train.init_checkpoint, config.model.name)
        params, batch_stats, _ = warm_start(params, batch_stats, init,
                                            use_ema=config.train.init_use_ema)
    replicated = sharding.replicated(run.mesh)
    state = jax.jit(lambda p, s: create_train_state(p, s, run.tx), out_shardings=replicated)(
        params, batch_stats)
    restored = checkpointer.restore(abstract_like(state, replicated))
    if restored is not None:
        state, _, step = restored
        logging.info("resumed from step %d of %s", step, checkpointer.directory)
    return dataclasses.replace(run, graphdef=graphdef, state=state, checkpointer=checkpointer,
                               compile_cache_dir=compile_cache_dir)
