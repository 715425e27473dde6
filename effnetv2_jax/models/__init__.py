"""EfficientNet V1 / V2 / Lite as Flax NNX modules, built from block-spec strings."""

from effnetv2_jax.models.arch import ArchConfig, ResolvedArch, ResolvedBlock, resolve_arch
from effnetv2_jax.models.block_spec import BlockSpec, ConvType, decode, decode_all, encode
from effnetv2_jax.models.conv_ops import CONV_IMPLS, default_conv_impl
from effnetv2_jax.models.counting import count_flops, count_params
from effnetv2_jax.models.efficientnet import EfficientNet
from effnetv2_jax.models.factory import abstract_model, create_model
from effnetv2_jax.models.variants import Preprocessing, Variant, get_variant, list_models, register
