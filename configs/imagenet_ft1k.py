"""Fine-tune an ImageNet-21k checkpoint on ImageNet-1k (21k -> 1k): configs/finetune.py with
dataset=imagenet1k, 15 epochs at batch 512.

    python -m effnetv2_jax.main --config=configs/imagenet_ft1k.py:code,model=s --workdir=DIR \
        --config.train.init_checkpoint=WORKDIR_OF_s_21k --config.data.data_dir=gs://BUCKET/tfds

`:code` (default) is google/automl's fine-tune config (constant LR, weight decay 1e-5), `:paper`
paper 5.3's cosine decay without weight decay (for 21k -> 1k the paper also says 15 epochs with
cosine decay); `model=s|m|l|xl` picks the network (default s), `hw=NAME` a hardware preset (all
described in finetune.py). One stage at the eval size (S 384, M/L 480, XL 512 px).
`--config.train.init_checkpoint=DIR` (a 21k checkpoint: s_21k.py's workdir or a converted
`-21k` one) is required: without it the run stops at start-up, before anything is built
(`train/config.validate`).

Expected (official README, `-21k-ft1k` checkpoints): S 84.9%, M 86.2%, L 86.9%, XL 87.2%.
"""

from effnetv2_jax import recipes


def get_config(arg: str = ""):
    return recipes.finetune(arg, dataset="imagenet1k")
