"""A tiny training run for tests: 2 blocks, 32-40 px, 2 progressive stages, synthetic data.

    python -m effnetv2_jax.main --config=tests/configs/tiny.py --workdir=/tmp/tiny
"""

from effnetv2_jax.train.config import base_config


def get_config():
    c = base_config()
    c.model.block_strings = ("r1_k3_s1_e1_i8_o8_c1", "r1_k3_s2_e4_i8_o16_se0.25")
    c.model.feature_size = 32
    c.data.source = "synthetic"
    c.data.synthetic_num_classes = 4
    c.data.synthetic_num_examples = 64
    c.data.synthetic_num_eval_examples = 20
    c.data.synthetic_image_size = 40
    c.train.global_batch_size = 8
    c.train.num_steps = 6
    c.train.warmup_epochs = 0.5
    c.train.log_every_steps = 2
    c.progressive.num_stages = 2
    c.progressive.preset = "custom"
    c.progressive.image_size = (32, 40)
    c.progressive.randaug_magnitude = (2.0, 5.0)
    c.progressive.mixup_alpha = (0.0, 0.2)
    c.progressive.cutmix_alpha = (0.0, 0.2)
    c.progressive.dropout_rate = (0.0, 0.2)
    c.eval.image_size = 40
    c.eval.global_batch_size = 8
    c.checkpoint.every_steps = 2
    c.checkpoint.compile_cache_dir = "none"
    return c


def with_compile_cache(compile_cache: str):
    """`get_config()` with the tests' shared compilation cache folder (restarts skip
    compiling, as they do for users)."""
    config = get_config()
    config.checkpoint.compile_cache_dir = compile_cache
    return config
