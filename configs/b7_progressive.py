"""EfficientNet-B7 (V1) trained with progressive learning, as the paper's Table 10 does.

    python -m effnetv2_jax.main --config=configs/b7_progressive.py --workdir=DIR \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

The reference does not record Table 10's values, so this recipe uses the official code's rule
(reference 3.3) with B7's own numbers: 4 stages, size 128 + (600 - 128) / 4 -> 600, i.e.
246, 364, 482, 600 px; RandAugment N=2 with magnitude 5 -> 28 (28 is the RandAugment B7
checkpoint's M, reference 3.7); no mixup; dropout 0.5 throughout; everything else the V1
recipe of efficientnet_b7.py (batch 2048, 218,949 steps, 0.128 peak, BN momentum 0.99, EMA
0.9999, survival 0.8), eval at 600 px.
Append `,hw=NAME` to the argument for a hardware preset (effnetv2_jax/train/hardware.py:
tpu_v3_8, tpu_v4_32, gpu_8xa100, cpu_debug, ...); `--config.key=value` flags override both.

Expected: no figure in the reference; the same model trained at 600 px with RandAugment reaches
84.7% top-1 (README, reference 5.2), which progressive learning should match in less time.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # so configs/common.py imports when
if _HERE not in sys.path:                            # config_flags loads this file by path
    sys.path.insert(0, _HERE)
import common  # noqa: E402


def get_config(arg: str = ""):
    return common.v1("efficientnet-b7", arg, augment="randaug", num_stages=4,
                     randaug_magnitude=28.0)
