"""EfficientNetV2-B0 on ImageNet-1k: 350 epochs at batch 4096, 4 progressive stages.

    python -m effnetv2_jax.main --config=configs/b0_imagenet.py --workdir=DIR \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

The official code's schedule (`effnetv2_configs.py`, `main.py`; the paper's Table 6 has no B-series
rows, so there is no `:paper`): 144, 160, 176, 192 px, V1 AutoAugment (policy v0) instead of
RandAugment, no mixup, the variant's dropout; BN momentum 0.9; RMSProp 0.256, 5 warmup epochs, 0.97
every 2.4 epochs, EMA 0.9999; eval at 224 px.
Append `,hw=NAME` to the argument for a hardware preset (effnetv2_jax/train/hardware.py:
tpu_v3_8, tpu_v4_32, gpu_8xa100, cpu_debug, ...); `--config.key=value` flags override both.

Expected: 78.7% top-1 (official README checkpoint).
"""

from effnetv2_jax import recipes


def get_config(arg: str = ""):
    return recipes.imagenet_v2("efficientnetv2-b0", arg)
