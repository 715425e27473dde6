"""Transfer: fine-tune an ImageNet EfficientNetV2 on Stanford Cars (TFDS cars196).

    python -m effnetv2_jax.main --config=configs/cars_ft.py:paper,model=s --workdir=DIR \
        --config.train.init_checkpoint=IMAGENET_CHECKPOINT_DIR

This is configs/finetune.py with `dataset=cars`. `:code` (default) is google/automl's fine-tune
config, `:paper` is paper 5.3; `model=s|m|l` picks the network (default s), `hw=NAME` a
hardware preset (all described in finetune.py).
10,000 steps at batch 512, one stage at the eval size (S 384, M/L 480 px), head re-initialised.
`--config.train.init_checkpoint=DIR` (a trained or converted ImageNet checkpoint) is required:
without it the run stops at start-up, before anything is built (`train/config.validate`).

Expected (paper Table 8, ImageNet-pretrained): S 93.8%, M 94.6%, L 95.1% top-1.
"""

from effnetv2_jax import recipes


def get_config(arg: str = ""):
    return recipes.finetune(arg, dataset="cars")
