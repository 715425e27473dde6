"""EfficientNetV2-L on ImageNet-1k: 350 epochs at batch 4096, 4 progressive stages.

    python -m effnetv2_jax.main --config=configs/l_imagenet.py:code --workdir=DIR \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

The argument picks the schedule (official `main.py` or paper Table 6):
  `:code` (default), google/automl main.py: 192, 256, 320, 384 px; RandAugment 5 -> 20;
    mixup = cutmix 0 -> 0.5; dropout 0.4;
    BN momentum 0.9.
  `:paper`, Table 6: 128 -> 380 px; RandAugment 5 -> 25;
    mixup 0 -> 0.4 (no cutmix); dropout 0.1 -> 0.5;
    BN momentum 0.99.
Both: RMSProp 0.016 per 256 images (0.256 at 4096), 5 warmup epochs, 0.97
every 2.4 epochs, weight decay 1e-5, label smoothing 0.1, EMA 0.9999, survival 0.8, eval 480 px.
Append `,hw=NAME` to the argument for a hardware preset (effnetv2_jax/train/hardware.py:
tpu_v3_8, tpu_v4_32, gpu_8xa100, cpu_debug, ...); `--config.key=value` flags override both.

Expected: 85.7% top-1 (official README checkpoint).
"""

from effnetv2_jax import recipes


def get_config(arg: str = "code"):
    return recipes.imagenet_v2("efficientnetv2-l", arg)
