"""EfficientNetV2 S/M/L/XL pretrained on ImageNet-21k: 60 epochs at 224 px, no progressive stages.

    python -m effnetv2_jax.main --config=configs/imagenet21k.py:model=s --workdir=DIR \
        --config.data.name=MY_IMAGENET21K --config.data.data_dir=gs://BUCKET/tensorflow_datasets

`model=s|m|l|xl` picks the network (default s); configs/s_21k.py, m_21k.py, l_21k.py and
xl_21k.py are this recipe with the model fixed. Official `datasets.py` (`ImageNet21k`): batch
4096, RMSProp 0.008 per 256 (0.128), 1 warmup epoch, cosine decay, label smoothing 0, crop and
flip only (augment "none"), dropout 1e-6, survival 1.0 (no stochastic depth), EMA 0.9999, weight
decay 1e-5, 224 px train and eval; classes from the dataset (the official head has 21,843).
ImageNet-21k is not in the TFDS catalog: prepare it as a TFDS dataset with an `image` feature and
a `labels` feature `Sequence(ClassLabel(num_classes=21843))` (every class of an image, as the
official TFRecords hold them) and pass its name as `data.name`.
Targets: multi-hot divided by the label count, softmax cross-entropy (paper 5.2, official
`multiclass=True`; the default preset "paper"). `--config=configs/imagenet21k.py:sigmoid,model=m`
uses 0/1 multi-hot targets and a sigmoid loss instead, as the published 21k checkpoints were
re-trained. Append `,hw=NAME` to the argument for a hardware preset (effnetv2_jax/train/hardware.py:
tpu_v3_8, tpu_v4_32, gpu_8xa100, cpu_debug, ...); `--config.key=value` flags override both.

Expected: no published 21k accuracy; fine-tuned on ImageNet-1k with
configs/finetune.py:dataset=imagenet1k (= imagenet_ft1k.py) the official checkpoints reach
S 84.9%, M 86.2%, L 86.9%, XL 87.2% top-1 (official README, `-21k-ft1k`).
"""

from effnetv2_jax import recipes


def get_config(arg: str = ""):
    return recipes.pretrain_21k(arg)
