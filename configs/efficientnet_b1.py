"""EfficientNet-B1 (V1) on ImageNet-1k with the tensorflow/tpu recipe and AutoAugment.

    python -m effnetv2_jax.main --config=configs/efficientnet_b1.py --workdir=DIR \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Reference 3.7: batch 2048, 218,949 steps (about 350 epochs), RMSProp 0.016 per 256 (0.128),
5 warmup epochs, 0.97 every 2.4 epochs, BN momentum 0.99, label smoothing 0.1, EMA 0.9999,
survival 0.8; one stage at the eval resolution 240 px (reference 1.3), dropout 0.2.
AutoAugment v0 as the `ckptsaug` checkpoints (`--config.data.augment=none` is the baseline).
Differs from tpu in one place: weight decay skips biases here (V1/tpu decays them).
Append `,hw=NAME` to the argument for a hardware preset (effnetv2_jax/train/hardware.py:
tpu_v3_8, tpu_v4_32, gpu_8xa100, cpu_debug, ...); `--config.key=value` flags override both.

Expected: 79.1% top-1 (README, AutoAugment checkpoint, reference 5.2).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # so configs/common.py imports when
if _HERE not in sys.path:                            # config_flags loads this file by path
    sys.path.insert(0, _HERE)
import common  # noqa: E402


def get_config(arg: str = ""):
    return common.v1("efficientnet-b1", arg)
