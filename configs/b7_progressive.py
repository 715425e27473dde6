"""EfficientNet-B7 (V1) trained with progressive learning, as the paper's Table 10 does.

    python -m effnetv2_jax.main --config=configs/b7_progressive.py --workdir=DIR \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Table 10's per-stage values are not reproduced here: this recipe applies the official V2 code's
progressive rule (`main.py`) to B7's own numbers: 4 stages, size 128 + (600 - 128) / 4 -> 600, i.e.
246, 364, 482, 600 px; RandAugment N=2 with magnitude 5 -> 28 (28 is the RandAugment B7
checkpoint's M, tensorflow/tpu README); no mixup; dropout 0.5 throughout; everything else the V1
recipe of efficientnet_b7.py (batch 2048, 218,949 steps, 0.128 peak, BN momentum 0.99, EMA
0.9999, survival 0.8), eval at 600 px.
Append `,hw=NAME` to the argument for a hardware preset (effnetv2_jax/train/hardware.py:
tpu_v3_8, tpu_v4_32, gpu_8xa100, cpu_debug, ...); `--config.key=value` flags override both.

Expected: not measured for this schedule; the same model trained at 600 px with RandAugment
reaches 84.7% top-1 (tensorflow/tpu README), which progressive learning should match in less
time (paper Table 10).
"""

from effnetv2_jax import recipes


def get_config(arg: str = ""):
    return recipes.v1("efficientnet-b7", arg, augment="randaug", num_stages=4,
                     randaug_magnitude=28.0)
