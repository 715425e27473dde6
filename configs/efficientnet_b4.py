"""EfficientNet-B4 (V1) on ImageNet-1k with the tensorflow/tpu recipe and AutoAugment.

    python -m effnetv2_jax.main --config=configs/efficientnet_b4.py --workdir=DIR \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

tensorflow/tpu `main.py`: batch 2048, 218,949 steps (about 350 epochs), RMSProp 0.016 per 256
(0.128), 5 warmup epochs, 0.97 every 2.4 epochs, BN momentum 0.99, label smoothing 0.1, EMA 0.9999,
survival 0.8; one stage at the eval resolution 380 px (tpu `efficientnet_builder.py`), dropout 0.4.
AutoAugment v0 as the `ckptsaug` checkpoints (`--config.data.augment=none` is the baseline).
Differs from tpu in one place: weight decay skips biases here (V1/tpu decays them).
Append `,hw=NAME` to the argument for a hardware preset (effnetv2_jax/train/hardware.py:
tpu_v3_8, tpu_v4_32, gpu_8xa100, cpu_debug, ...); `--config.key=value` flags override both.

Expected: 82.9% top-1 (tensorflow/tpu README, AutoAugment checkpoint).
"""

from effnetv2_jax import recipes


def get_config(arg: str = ""):
    return recipes.v1("efficientnet-b4", arg)
