"""The paper's training recipes as functions; each file in configs/ is one call to one of them.

    from effnetv2_jax import recipes

    def get_config(arg: str = ""):
        return recipes.imagenet_v2("efficientnetv2-s", arg)

Every recipe's `get_config(arg)` takes ml_collections' config argument (the text after ':' in
`--config=configs/s_imagenet.py:paper,hw=tpu_v4_32`): comma-separated tokens, where a bare token
picks the schedule preset ("code" or "paper"; "sigmoid" for 21k pretraining) and `key=value`
tokens set `hw` (a hardware preset of effnetv2_jax/train/hardware.py), `model` (s, m, l, xl) or
`dataset` (the fine-tunes). The hardware preset is applied last inside get_config, so
`--config.key=value` flags still override it. Importing this module needs no TensorFlow.

Numbers come from the paper (Tan & Le 2021, "EfficientNetV2: Smaller Models and Faster
Training", sections 5.1-5.3, Tables 6 and 8) and the official code: google/automl
`efficientnetv2/` (`effnetv2_configs.py`, `hparams.py`, `datasets.py`, `main.py`) for V2, and
tensorflow/tpu `models/official/efficientnet/` (`efficientnet_builder.py`, `main.py`) for V1.
"""

from __future__ import annotations

import ml_collections

from effnetv2_jax.train import hardware
from effnetv2_jax.train.config import base_config

# ImageNet-1k has 1,281,167 training images in TFDS; the official code holds out 25,021 of them
# as minival (official `datasets.py`), so 350 epochs are 109,474 steps here and 107,336 there.
V1 = {  # tensorflow/tpu `efficientnet_builder.py`: (resolution = train = eval size, dropout)
    "efficientnet-b0": (224, 0.2), "efficientnet-b1": (240, 0.2),
    "efficientnet-b2": (260, 0.3), "efficientnet-b3": (300, 0.3),
    "efficientnet-b4": (380, 0.4), "efficientnet-b5": (456, 0.4),
    "efficientnet-b6": (528, 0.5), "efficientnet-b7": (600, 0.5),
}
# Fine-tune sizes: the eval size rounded down to a multiple of 16 (official `datasets.py`,
# `ImagenetFt`: isize=1.0). The same four models are the 21k pretraining's.
FT_SIZE = {"s": 384, "m": 480, "l": 480, "xl": 512}
TRANSFER = {  # dataset: (TFDS name, train split, eval split); official `datasets.py`, paper 5.3
    "cifar10": ("cifar10", "train", "test"),
    "cifar100": ("cifar100", "train", "test"),
    "flowers": ("oxford_flowers102", "train+validation", "test"),
    "cars": ("cars196", "train", "test"),
}
# What `finetune` accepts as `dataset=`: the transfer sets, and ImageNet-1k after 21k pretraining.
FINETUNE_DATASETS = (*TRANSFER, "imagenet1k")


def parse_arg(arg: str | None, presets: tuple[str, ...], default: str,
              keys: tuple[str, ...] = ("hw",)) -> dict[str, str]:
    """"paper,hw=tpu_v4_32" -> {"preset": "paper", "hw": "tpu_v4_32", ...}; unknown parts fail.

    Every key of `keys` (and "hw", "model") is in the result, "" where the argument omits it.
    """
    out = {"preset": default, "hw": "", "model": "", **{key: "" for key in keys}}
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        key, sep, value = token.partition("=")
        if not sep:
            if token not in presets:
                raise ValueError(f"unknown preset {token!r} in config argument {arg!r} "
                                 f"(valid: {', '.join(presets)})")
            out["preset"] = token
        elif key in keys:
            out[key] = value
        else:
            raise ValueError(f"unknown key {key!r} in config argument {arg!r} "
                             f"(valid: {', '.join(k + '=' for k in keys)})")
    return out


def _choice(what: str, value: str, valid: tuple[str, ...] | dict) -> str:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r} (valid: {', '.join(valid)})")
    return value


def fixed_schedule(config, size: int, dropout: float, randaug: float = 0.0) -> None:
    """One stage at `size` px: no progressive learning (V1, 21k pretraining, fine-tunes)."""
    p = config.progressive
    p.num_stages = 1
    p.preset = "custom"
    p.image_size = (size, size)
    p.randaug_magnitude = (randaug, randaug)
    p.mixup_alpha = (0.0, 0.0)
    p.cutmix_alpha = (0.0, 0.0)
    p.dropout_rate = (dropout, dropout)
    config.eval.image_size = size


def _imagenet(config) -> None:
    config.data.source = "tfds"
    config.data.name = "imagenet2012"
    config.data.eval_split = "validation"
    config.eval.global_batch_size = 1024
    config.checkpoint.every_steps = 2000


def imagenet_v2(model: str, arg: str | None) -> ml_collections.ConfigDict:
    """V2 on ImageNet-1k (paper 5.1; official `hparams.py`, `main.py`): 350 epochs, batch 4096,
    RMSProp 0.016 per 256 (0.256), 5 warmup epochs, 0.97 every 2.4 epochs, EMA 0.9999,
    4 progressive stages.

    "code" follows google/automl main.py (BN momentum 0.9, the variant default); "paper" follows
    Table 6 (BN momentum 0.99, section 5.1). B0-B3 have only the code schedule, with V1
    AutoAugment instead of RandAugment (official `effnetv2_configs.py`).
    """
    b_series = model[-2] == "b"
    args = parse_arg(arg, ("code",) if b_series else ("code", "paper"), "code")
    config = base_config()
    config.model.name = model
    _imagenet(config)
    config.data.augment = "autoaug" if b_series else "randaug"
    config.train.global_batch_size = 4096
    config.train.num_epochs = 350.0
    config.train.base_lr = 0.016
    config.train.lr_schedule = "exponential"
    config.train.warmup_epochs = 5.0
    config.train.decay_epochs = 2.4
    config.train.decay_factor = 0.97
    config.progressive.num_stages = 4
    config.progressive.preset = args["preset"]
    if args["preset"] == "paper":
        config.model.bn_momentum = 0.99
    return hardware.apply(config, args["hw"])


def v1(model: str, arg: str | None, augment: str = "autoaug",
       num_stages: int = 1, randaug_magnitude: float = 0.0) -> ml_collections.ConfigDict:
    """V1 with the tensorflow/tpu recipe (its `main.py`): batch 2048, 218,949 steps (about 350
    epochs), 0.016 per 256 (0.128), 5 warmup epochs, 0.97 every 2.4 epochs, BN momentum 0.99,
    label smoothing 0.1, EMA 0.9999, survival 0.8, trained at the eval resolution.

    With `num_stages` > 1 the size grows by the V2 code's rule, first = 128 + (res - 128) / M,
    and RandAugment by 5 -> `randaug_magnitude` (official `main.py`); dropout stays constant.
    """
    args = parse_arg(arg, (), "")
    size, dropout = V1[model]
    config = base_config()
    config.model.name = model
    config.model.bn_momentum = 0.99
    config.model.survival_prob = 0.8
    _imagenet(config)
    config.data.augment = augment
    config.train.global_batch_size = 2048
    config.train.num_steps = 218_949
    config.train.base_lr = 0.016
    config.train.lr_schedule = "exponential"
    config.train.warmup_epochs = 5.0
    config.train.decay_epochs = 2.4
    config.train.decay_factor = 0.97
    config.train.label_smoothing = 0.1
    config.train.ema_decay = 0.9999
    fixed_schedule(config, size, dropout, randaug_magnitude)
    if num_stages > 1:
        p = config.progressive
        p.num_stages = num_stages
        p.image_size = (int(128 + (size - 128) / num_stages), size)
        p.randaug_magnitude = (5.0, randaug_magnitude)
    return hardware.apply(config, args["hw"])


def pretrain_21k(arg: str | None, model: str | None = None) -> ml_collections.ConfigDict:
    """ImageNet-21k pretraining (official `datasets.py`, `ImageNet21k`): 60 epochs at 224 px,
    no progressive stages, 0.008 per 256 (0.128 at 4096), 1 warmup epoch, cosine, no label
    smoothing, no augmentation beyond crop and flip, dropout 1e-6, stochastic depth off; the
    rest as ImageNet-1k.

    Labels are the dataset's `labels` (Sequence(ClassLabel)), as multi-hot targets:
    paper   (default; section 5.2, official multiclass=True): divided by the label count,
            softmax cross-entropy;
    sigmoid (official loss_type='sigmoid', how the published 21k checkpoints were re-trained):
            0/1 multi-hot, sigmoid cross-entropy.

    Args:
      arg: the config argument: a preset and `hw=`; with `model` None also `model=s|m|l|xl`
        (default s), as configs/imagenet21k.py takes it.
      model: "s", "m", "l" or "xl" where the file fixes it (configs/s_21k.py ...); the
        argument then has no `model=`.
    """
    keys = ("hw",) if model else ("hw", "model")
    args = parse_arg(arg, ("paper", "sigmoid"), "paper", keys=keys)
    size_key = _choice("model", model or args["model"] or "s", FT_SIZE)
    config = base_config()
    config.model.name = f"efficientnetv2-{size_key}"
    config.model.survival_prob = 1.0
    config.data.source = "tfds"
    config.data.name = "imagenet21k"  # not in the TFDS catalog: prepare it yourself (docstring)
    config.data.augment = "none"
    config.data.label_key = "labels"
    config.data.normalize_multi_hot = args["preset"] == "paper"
    config.train.loss = "softmax" if args["preset"] == "paper" else "sigmoid"
    config.train.global_batch_size = 4096
    config.train.num_epochs = 60.0
    config.train.base_lr = 0.008
    config.train.lr_schedule = "cosine"
    config.train.warmup_epochs = 1.0
    config.train.label_smoothing = 0.0
    fixed_schedule(config, 224, 1e-6)
    config.eval.global_batch_size = 1024
    config.checkpoint.every_steps = 2000
    return hardware.apply(config, args["hw"])


def finetune(arg: str | None, dataset: str | None = None) -> ml_collections.ConfigDict:
    """A V2 fine-tune from `train.init_checkpoint`, head re-initialised (official `datasets.py`,
    `ImagenetFt` and the transfer sets derived from it; paper 5.3).

    Shared: batch 512, 10,000 steps, RMSProp, EMA 0.9996, label smoothing 0.1, dropout 1e-6,
    survival 0.8, no mixup, "ft" augmentation, one stage at the fine-tune size.
    code  (ImagenetFt in google/automl): constant 0.0005 per 256 (0.001), 1 warmup epoch,
          weight decay 1e-5.
    paper (section 5.3): 0.001 with cosine decay, weight decay 0; warmup kept from the code.
    ImageNet-1k (21k -> 1k) trains 15 epochs instead of 10,000 steps.

    Args:
      arg: the config argument: a preset, `hw=` and `model=s|m|l|xl` (default s); with
        `dataset` None also `dataset=` (required), as configs/finetune.py takes it.
      dataset: one of FINETUNE_DATASETS where the file fixes it (configs/cifar10_ft.py ...);
        the argument then has no `dataset=`.
    """
    keys = ("hw", "model") if dataset else ("hw", "model", "dataset")
    args = parse_arg(arg, ("code", "paper"), "code", keys=keys)
    dataset = dataset or args["dataset"]
    if not dataset:
        raise ValueError(f"config argument {arg!r} needs dataset=NAME "
                         f"(valid: {', '.join(FINETUNE_DATASETS)})")
    _choice("dataset", dataset, FINETUNE_DATASETS)
    size_key = _choice("model", args["model"] or "s", FT_SIZE)
    config = base_config()
    config.model.name = f"efficientnetv2-{size_key}"
    config.data.source = "tfds"
    if dataset == "imagenet1k":
        _imagenet(config)
        config.train.num_epochs = 15.0
    else:
        config.data.name, config.data.train_split, config.data.eval_split = TRANSFER[dataset]
        config.train.num_steps = 10_000
        config.eval.global_batch_size = 512
        config.checkpoint.every_steps = 1000
    config.data.augment = "ft"
    config.train.global_batch_size = 512
    config.train.base_lr = 0.0005
    config.train.warmup_epochs = 1.0
    config.train.ema_decay = 0.9996
    config.train.label_smoothing = 0.1
    if args["preset"] == "paper":
        config.train.lr_schedule = "cosine"
        config.train.weight_decay = 0.0
    else:
        config.train.lr_schedule = "constant"
        config.train.weight_decay = 1e-5
    config.train.init_checkpoint = ""  # required: =DIR or =pretrained:TAG (e.g. in21k)
    config.train.require_init_checkpoint = True  # train/config.validate refuses to start without
    config.train.init_use_ema = True
    fixed_schedule(config, FT_SIZE[size_key], 1e-6)
    return hardware.apply(config, args["hw"])
