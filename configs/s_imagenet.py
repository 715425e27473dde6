"""EfficientNetV2-S on ImageNet-1k, 350 epochs at batch 4096 with 4 progressive stages.

    python -m effnetv2_jax.main --config=configs/s_imagenet.py --workdir=gs://BUCKET/v2s \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Follows the official code (google/automl efficientnetv2 `main.py`) by default: sizes 171, 214,
257, 300; RandAugment 5 -> 10; no mixup; dropout 0.2; BN momentum 0.9; RMSProp lr
0.016 * 4096 / 256 = 0.256, 5 warmup epochs, 0.97 every 2.4 epochs; EMA 0.9999; eval at 384 px.
`--config.progressive.preset=paper` switches to the paper's Table 6 (128 -> 300 px,
RandAugment 5 -> 15, dropout 0.1 -> 0.3, BN momentum 0.99).

Expected: 83.9% top-1 (official README checkpoint; reproductions following the code report
about 83.5%, reference section 7) after 107,336 steps.
"""

from effnetv2_jax.train.config import base_config


def get_config(preset: str = "code"):
    config = base_config()
    config.model.name = "efficientnetv2-s"
    config.data.source = "tfds"
    config.data.name = "imagenet2012"
    config.data.eval_split = "validation"
    config.data.augment = "randaug"
    config.train.global_batch_size = 4096
    config.train.num_epochs = 350.0
    config.progressive.num_stages = 4
    config.progressive.preset = preset
    if preset == "paper":
        config.model.bn_momentum = 0.99
    config.eval.global_batch_size = 1024
    config.checkpoint.every_steps = 2000
    return config
