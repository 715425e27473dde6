"""EfficientNetV2-M pretrained on ImageNet-21k: configs/imagenet21k.py with model=m.

    python -m effnetv2_jax.main --config=configs/m_21k.py --workdir=DIR \
        --config.data.name=MY_IMAGENET21K --config.data.data_dir=gs://BUCKET/tensorflow_datasets

60 epochs at 224 px, no progressive stages; the recipe, the dataset to prepare and the argument
(`:sigmoid` for the published checkpoints' loss, `hw=NAME`) are described in imagenet21k.py.

Expected: no published 21k accuracy; fine-tuned on ImageNet-1k with imagenet_ft1k.py:model=m
the official checkpoint reaches 86.2% top-1 (official README, `efficientnetv2-m-21k-ft1k`).
"""

from effnetv2_jax import recipes


def get_config(arg: str = ""):
    return recipes.pretrain_21k(arg, model="m")
