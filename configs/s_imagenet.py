"""EfficientNetV2-S on ImageNet-1k: 350 epochs at batch 4096, 4 progressive stages.

    python -m effnetv2_jax.main --config=configs/s_imagenet.py:code --workdir=DIR \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

The argument picks the schedule (official `main.py` or paper Table 6):
  `:code` (default), google/automl main.py: 171, 214, 257, 300 px; RandAugment 5 -> 10;
    no mixup/cutmix; dropout 0.2;
    BN momentum 0.9.
  `:paper`, Table 6: 128 -> 300 px; RandAugment 5 -> 15; no mixup;
    dropout 0.1 -> 0.3;
    BN momentum 0.99.
Both: RMSProp 0.016 per 256 images (0.256 at 4096), 5 warmup epochs, 0.97
every 2.4 epochs, weight decay 1e-5, label smoothing 0.1, EMA 0.9999, survival 0.8, eval 384 px.
Append `,hw=NAME` to the argument for a hardware preset (effnetv2_jax/train/hardware.py:
tpu_v3_8, tpu_v4_32, gpu_8xa100, cpu_debug, ...); `--config.key=value` flags override both.

Expected: 83.9% top-1 (official README checkpoint = paper); runs that follow the code
preset reproduced about 83.5% (google/automl#1175).
"""

from effnetv2_jax import recipes


def get_config(arg: str = "code"):
    return recipes.imagenet_v2("efficientnetv2-s", arg)
