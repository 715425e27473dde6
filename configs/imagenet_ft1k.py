"""Fine-tune an ImageNet-21k checkpoint on ImageNet-1k (21k -> 1k): 15 epochs at batch 512.

    python -m effnetv2_jax.main --config=configs/imagenet_ft1k.py:code,model=s --workdir=DIR \
        --config.train.init_checkpoint=WORKDIR_OF_s_21k --config.data.data_dir=gs://BUCKET/tfds

`:code` (default) is google/automl's fine-tune config (reference 3.5): batch 512, RMSProp with a
constant 0.0005 per 256 (0.001), 1 warmup epoch, weight decay 1e-5; `:paper` is section 5.3:
0.001 with cosine decay and no weight decay. Both: EMA 0.9996, label smoothing 0.1, dropout
1e-6, survival 0.8, no mixup, "ft" augmentation, one stage at the eval size (S 384, M/L 480,
XL 512 px). `model=s|m|l` picks the network (default s). The head is re-initialised for the new
class count. Set `--config.train.init_checkpoint=DIR` to a trained or converted ImageNet
checkpoint: left empty, the run trains from scratch (the loop does not refuse).
(For 21k -> 1k the paper also says 15 epochs with cosine decay.) `model=xl` works too.
Append `,hw=NAME` to the argument for a hardware preset (effnetv2_jax/train/hardware.py:
tpu_v3_8, tpu_v4_32, gpu_8xa100, cpu_debug, ...); `--config.key=value` flags override both.

Expected (README `-21k-ft1k` checkpoints, reference 5.1): S 84.9%, M 86.2%, L 86.9%, XL 87.2%.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # so configs/common.py imports when
if _HERE not in sys.path:                            # config_flags loads this file by path
    sys.path.insert(0, _HERE)
import common  # noqa: E402


def get_config(arg: str = ""):
    return common.finetune("imagenet", arg)
