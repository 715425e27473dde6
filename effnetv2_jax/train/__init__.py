"""Training: sharded jit step, progressive learning, Orbax checkpoints, CLU metrics."""

from effnetv2_jax.train.config import base_config, validate
from effnetv2_jax.train.loop import evaluate, train_and_evaluate
from effnetv2_jax.train.progressive import Stage, make_stages, preset, stage_at
