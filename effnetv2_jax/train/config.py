"""The base training config (every key, with its meaning) and its validation.

Recipes in `configs/` start from `base_config()` and change values; the dict is locked, so a
misspelt key (`--config.trian.seed=1`) fails at once, and ml_collections refuses a value of the
wrong type. `validate` checks the values before anything is built or compiled.
"""

from __future__ import annotations

import ml_collections

MODES = ("train", "eval", "train_and_eval")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = "train_and_eval"     # train | eval | train_and_eval
    c.seed = 0                    # parameters, data order, augmentation, dropout: all from this

    c.model = ml_collections.ConfigDict()
    c.model.name = "efficientnetv2-s"   # a registered variant (effnetv2_jax.list_models())
    c.model.num_classes = 0             # 0: the dataset's class count
    c.model.block_strings = ()          # () keeps the variant's; else one string per stage
    c.model.width = 0.0                 # 0: the variant's width coefficient
    c.model.depth = 0.0                 # 0: the variant's depth coefficient
    c.model.feature_size = 0            # 0: the variant's head width (1280)
    c.model.survival_prob = -1.0        # -1: the variant's (0.8); 1.0 disables drop-path
    c.model.bn_momentum = -1.0          # -1: the variant's (V2 code 0.9; paper 0.99)
    c.model.dtype = "float32"           # compute dtype: float32 | bfloat16 (params stay f32)
    c.model.conv_impl = "auto"          # auto | xla | cpu (see models/ops.py)
    c.model.remat = False               # recompute each block in the backward: less memory
                                        # (V2-L at batch 128 per 16 GiB chip), ~1/3 more compute

    c.data = ml_collections.ConfigDict()  # fields of effnetv2_jax.data.DataConfig
    c.data.source = "tfds"              # tfds | folder | digits | synthetic
    c.data.name = "imagenet2012"        # TFDS name
    c.data.data_dir = ""                # TFDS data_dir ("" = TFDS default)
    c.data.train_split = "train"
    c.data.eval_split = ""              # "" = "validation" if the dataset has it, else "test"
    c.data.image_key = "image"
    c.data.label_key = "label"          # a ClassLabel, or Sequence(ClassLabel): multi-label
    c.data.normalize_multi_hot = True   # multi-label targets: multi-hot / label count (paper 5.2)
    c.data.folder_root = ""             # image folder: root/<class>/<image>
    c.data.folder_eval_root = ""
    c.data.download = False             # let TFDS download (needs network; never implicit)
    c.data.strict = False               # stop at the first unreadable image instead of skipping
    c.data.augment = "randaug"          # randaug | autoaug | ft | none
    c.data.randaug_layers = 2
    c.data.random_flip = True           # off for digits, text, ...
    c.data.min_crop_area = 0.0          # 0: official (0.05 V2 crop, 0.08 legacy crop)
    c.data.synthetic_num_classes = 10
    c.data.synthetic_num_examples = 1024
    c.data.synthetic_num_eval_examples = 256
    c.data.synthetic_image_size = 64
    c.data.cache = True                 # hold encoded records in memory (instant resume) ...
    c.data.cache_max_gb = 0.0           # ... if this process's share fits (0: 1/4 of host RAM)
    c.data.shuffle_buffer = 16384
    c.data.num_parallel_calls = -1      # -1 = tf.data AUTOTUNE
    c.data.prefetch = 2

    c.preprocess = ml_collections.ConfigDict()  # overrides of the variant's metadata
    c.preprocess.crop_padding = -1      # eval centre crop keeps size/(size+p); -1: the variant's;
                                        # 0: the whole image (small images such as digits)

    c.train = ml_collections.ConfigDict()
    c.train.global_batch_size = 4096
    c.train.num_epochs = 350.0
    c.train.num_steps = 0               # > 0 overrides num_epochs
    c.train.optimizer = "rmsprop"       # rmsprop (TF1 semantics) | sgd | adamw
    c.train.base_lr = 0.016             # per 256 images: peak = base_lr * batch / 256
    c.train.lr_schedule = "exponential"  # exponential | cosine | constant
    c.train.warmup_epochs = 5.0
    c.train.decay_epochs = 2.4
    c.train.decay_factor = 0.97
    c.train.min_lr = 0.0
    c.train.weight_decay = 1e-5         # coupled L2 on kernels only
    c.train.label_smoothing = 0.1
    c.train.loss = "softmax"            # softmax (cross-entropy) | sigmoid (binary, per class)
    c.train.grad_clip_norm = 0.0        # 0: off (official)
    c.train.ema_decay = 0.9999
    c.train.bn_mode = "global"          # global | per_device | groups
    c.train.bn_group_size = 8           # devices per group when bn_mode = groups
    c.train.init_checkpoint = ""        # fine-tune from a checkpoint or "pretrained:TAG"
    c.train.init_use_ema = True         # take its EMA weights (as the official fine-tunes)
    c.train.require_init_checkpoint = False  # fine-tunes: refuse to start without one
    c.train.log_every_steps = 100
    c.train.device_prefetch = 2         # batches put on the devices ahead of the step (0: none)
    c.train.profile_steps = 0           # > 0: profile this many steps after the first log
    c.train.on_nonfinite = "stop"       # NaN/inf loss or gradient: stop (naming the step; the
                                        # last good checkpoint is kept) | skip the update

    c.progressive = ml_collections.ConfigDict()
    c.progressive.num_stages = 4
    c.progressive.preset = "code"       # code | paper | custom (uses the values below)
    c.progressive.image_size = (128, 300)         # first and last stage, pixels
    c.progressive.randaug_magnitude = (5.0, 15.0)
    c.progressive.mixup_alpha = (0.0, 0.0)
    c.progressive.cutmix_alpha = (0.0, 0.0)
    c.progressive.dropout_rate = (0.1, 0.3)
    # () : train.global_batch_size in every stage; else one global batch per stage, e.g.
    # (4096, 4096, 2048, 2048). Each stage's lr peak is base_lr * its batch / 256; with
    # num_epochs each stage trains num_epochs / num_stages epochs (its steps follow its batch),
    # with num_steps each stage 1/num_stages of the steps (train/progressive.py)
    c.progressive.global_batch_sizes = ()

    c.eval = ml_collections.ConfigDict()
    c.eval.image_size = 0               # 0: the variant's eval size
    c.eval.global_batch_size = 0        # 0: the train batch
    c.eval.every_steps = 0              # 0: at the end of each stage

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000
    c.checkpoint.keep_latest = 3
    c.checkpoint.keep_best = 1
    c.checkpoint.async_save = True
    # "" : <workdir>/compile_cache (executables, and stored traces so restarts skip tracing);
    # "none" disables both
    c.checkpoint.compile_cache_dir = ""

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""   # host:port; empty = single process (or Cloud TPU)
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    c.lock()
    return c


def _choice(config, key: str, valid) -> None:
    value = config
    for part in key.split("."):
        value = value[part]
    if value not in valid:
        raise ValueError(f"config.{key}={value!r} is not one of {', '.join(map(str, valid))}")


def _positive(config, key: str, allow_zero: bool = False) -> None:
    value = config
    for part in key.split("."):
        value = value[part]
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"config.{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every value that can be checked before building anything; names the bad key."""
    from effnetv2_jax.data.config import AUGMENTS, SOURCES  # noqa: PLC0415 (cheap, lazy)
    from effnetv2_jax.models.ops import CONV_IMPLS  # noqa: PLC0415
    from effnetv2_jax.models.variants import list_models  # noqa: PLC0415
    from effnetv2_jax.train.optim import OPTIMIZERS, SCHEDULES  # noqa: PLC0415
    from effnetv2_jax.train.progressive import PRESETS  # noqa: PLC0415
    from effnetv2_jax.train.sharding import BN_MODES  # noqa: PLC0415
    from effnetv2_jax.train.step import LOSSES  # noqa: PLC0415

    _choice(config, "mode", MODES)
    _choice(config, "model.name", list_models())
    _choice(config, "model.dtype", ("float32", "bfloat16"))
    _choice(config, "model.conv_impl", ("auto",) + CONV_IMPLS)
    _choice(config, "data.source", SOURCES)
    _choice(config, "data.augment", AUGMENTS)
    _choice(config, "train.optimizer", OPTIMIZERS)
    _choice(config, "train.lr_schedule", SCHEDULES)
    _choice(config, "train.loss", LOSSES)
    _choice(config, "train.bn_mode", BN_MODES)
    _choice(config, "train.on_nonfinite", ("stop", "skip"))
    _choice(config, "progressive.preset", PRESETS + ("custom",))
    for key in ("train.global_batch_size", "train.base_lr", "train.log_every_steps",
                "checkpoint.every_steps", "checkpoint.keep_latest"):
        _positive(config, key)
    for key in ("train.num_epochs", "train.num_steps", "train.weight_decay",
                "train.label_smoothing", "train.grad_clip_norm", "train.warmup_epochs",
                "model.num_classes", "eval.global_batch_size", "eval.every_steps",
                "eval.image_size", "checkpoint.keep_best", "train.profile_steps",
                "train.device_prefetch"):
        _positive(config, key, allow_zero=True)
    if config.train.num_steps == 0 and config.train.num_epochs == 0:
        raise ValueError("config.train.num_steps or config.train.num_epochs must be > 0")
    if config.train.require_init_checkpoint and not config.train.init_checkpoint:
        raise ValueError("this recipe fine-tunes a trained model: set "
                         "--config.train.init_checkpoint=DIR (a trained or converted checkpoint) or "
                         "=pretrained:TAG (effnetv2_jax.list_pretrained(model))")
    if config.progressive.num_stages < 1:
        raise ValueError(f"config.progressive.num_stages={config.progressive.num_stages} must "
                         f"be >= 1 (1 = no progressive learning)")
    if not 0.0 <= config.train.ema_decay < 1.0:
        raise ValueError(f"config.train.ema_decay={config.train.ema_decay} must be in [0, 1)")
    if not 0.0 <= config.train.label_smoothing < 1.0:
        raise ValueError(f"config.train.label_smoothing={config.train.label_smoothing} must be "
                         f"in [0, 1)")
    for key in ("image_size", "randaug_magnitude", "mixup_alpha", "cutmix_alpha",
                "dropout_rate"):
        pair = tuple(config.progressive[key])
        if len(pair) != 2 or min(pair) < 0:
            raise ValueError(f"config.progressive.{key}={pair!r} must be (first, last), >= 0")
    batches = tuple(config.progressive.global_batch_sizes)
    if batches and len(batches) != config.progressive.num_stages:
        raise ValueError(f"config.progressive.global_batch_sizes={batches!r} gives "
                         f"{len(batches)} batches for {config.progressive.num_stages} stages: "
                         f"give one per stage, or () for train.global_batch_size throughout")
    for i, batch in enumerate(batches):
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"config.progressive.global_batch_sizes[{i}]={batch!r} (stage "
                             f"{i}'s global batch) must be a positive integer")
    if max(config.progressive.dropout_rate) >= 1.0:
        raise ValueError(f"config.progressive.dropout_rate={config.progressive.dropout_rate} "
                         f"must stay below 1")
