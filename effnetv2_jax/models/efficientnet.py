"""The EfficientNet network (V1, V2 and Lite share it): stem -> blocks -> head -> classifier.

Input: images [batch, height, width, 3], already normalised (see the variant's `Preprocessing`;
the model never normalises, so nothing is normalised twice). Any height and width work; each
stride-2 layer gives ceil(size / 2) with TF "SAME" padding.

Train vs eval is a call argument, not module state, so one instance serves both steps:
`model(x, train=True, key=key)` uses batch statistics (and updates the running ones), dropout and
stochastic depth; `model(x)` is inference. No RNG state lives in the model: training draws
everything from `key` (fold it with the step: `jax.random.fold_in(base_key, step)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from effnetv2_jax.models.arch import ArchConfig, resolve_arch
from effnetv2_jax.models.blocks import make_block
from effnetv2_jax.models.layers import BatchNorm, Dense, LayerFactory
from effnetv2_jax.models.ops import ops_for, resolve_conv_impl
from effnetv2_jax.models.remat import remat_call


class EfficientNet(nnx.Module):
    """EfficientNet from an `ArchConfig`.

    Args:
      arch: the architecture (block strings, scaling, activation, regularisation, BN).
      num_classes: classifier outputs; ignored when `include_top=False`.
      include_top: False drops the classifier; the call then returns pooled features
        [batch, head_channels] (after dropout in training).
      dtype: compute dtype (float32, or bfloat16 for mixed precision). Parameters and BN
        statistics stay float32; logits are returned in float32.
      conv_impl: the ops the layers compute with (`models.ops`): "xla" (the reference; TPU,
        GPU), "cpu" (XLA:CPU's faster forms, same numbers) or None/"auto" (by JAX's default
        backend; training passes the impl for its devices' platform).
      remat: in training, recompute each block's activations in the backward pass instead of
        keeping them (`models.remat.remat_call` per block): about one more forward pass of
        compute for a peak memory of roughly the block inputs plus one block's activations
        (V2-L, 384 px, 128 per chip, bf16: 13.6 instead of 173.6 GiB). Eval ignores it.
      rngs: parameter initialisation keys.
    """

    def __init__(self, arch: ArchConfig, num_classes: int = 1000, *, include_top: bool = True,
                 dtype=jnp.float32, conv_impl: str | None = None, remat: bool = False,
                 rngs: nnx.Rngs):
        if include_top and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        conv_impl = resolve_conv_impl(conv_impl)
        resolved = resolve_arch(arch)
        self.arch = arch
        self.resolved = resolved
        self.num_classes = num_classes if include_top else None
        self.dtype = dtype
        self.conv_impl = conv_impl
        self.ops = ops_for(conv_impl)
        self.remat = bool(remat)
        self.dropout_rate = arch.dropout_rate
        layers = LayerFactory(self.ops, dtype, arch.bn_momentum, arch.bn_epsilon)
        stem_key, head_key, classifier_key, *block_keys = jax.random.split(
            rngs.params(), 3 + resolved.num_blocks)

        self.stem_conv = layers.conv(3, resolved.stem_channels, 3, stride=2, key=stem_key)
        self.stem_bn = layers.batch_norm(resolved.stem_channels)
        self.blocks = nnx.List([make_block(b, activation=arch.activation, layers=layers, key=k)
                                for b, k in zip(resolved.blocks, block_keys)])
        last_channels = resolved.blocks[-1].out_channels
        self.head_conv = layers.conv(last_channels, resolved.head_channels, 1, key=head_key)
        self.head_bn = layers.batch_norm(resolved.head_channels)
        self.classifier = (Dense(resolved.head_channels, num_classes, dtype=dtype,
                                 key=classifier_key) if include_top else None)
        self._endpoint_blocks = tuple(resolved.endpoint_blocks())

    @property
    def num_features(self) -> int:
        """Channels of the pooled features that feed the classifier."""
        return self.resolved.head_channels

    def set_bn_groups(self, groups: int) -> None:
        """Computes BatchNorm batch statistics over `groups` contiguous slices of the batch.

        1 (the default) normalises over the whole (global) batch. With the batch sharded over
        devices, `groups = num_devices` gives per-device statistics and `num_devices // 8`
        the official TPU code's groups of 8 replicas. A static setting: re-split the model
        after changing it.
        """
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"BN groups must be a positive int, got {groups!r}")
        for _, node in nnx.iter_graph(self):
            if isinstance(node, BatchNorm):
                node.groups = groups

    def _check_input(self, images):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images [batch, height, width, 3], got shape "
                             f"{tuple(images.shape)}")

    def extract_endpoints(self, images, *, train: bool = False,
                          key: jax.Array | None = None) -> dict[str, jax.Array]:
        """Feature maps at every stride, as the official `reduction_i` endpoints.

        Returns a dict with `stem` (stride 2), `reduction_1` .. `reduction_5` (strides 2, 4, 8,
        16, 32 for the official variants: the output of the last block before each stride-2
        block, and of the final block), `head` ([batch, h/32, w/32, head_channels], after the
        head conv, BN and activation) and `pooled` ([batch, head_channels]).
        """
        self._check_input(images)
        bn = dict(use_running_average=not train, activation=self.arch.activation)
        endpoints = {}
        x = self.stem_bn(self.stem_conv(images), **bn)
        endpoints["stem"] = x
        reduction = 0
        for block in self.blocks:
            if train and self.remat:
                x = remat_call(block, x, key, train=True)
            else:
                x = block(x, train=train, key=key)
            if block.index in self._endpoint_blocks:
                reduction += 1
                endpoints[f"reduction_{reduction}"] = x
        x = self.head_bn(self.head_conv(x), **bn)
        endpoints["head"] = x
        endpoints["pooled"] = self.ops.spatial_mean(x, train=train)
        return endpoints

    def __call__(self, images, *, train: bool = False, key: jax.Array | None = None,
                 dropout_rate: float | None = None):
        """images [batch, height, width, 3] -> logits [batch, num_classes] float32 (or pooled
        features [batch, head_channels] when built without the top).

        `dropout_rate` overrides the architecture's rate for this call (progressive learning
        raises it stage by stage); it is a Python float, so each value compiles once.
        """
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {rate!r}")
        needs_key = train and (rate > 0 or any(
            b.residual and b.survival_prob < 1.0 for b in self.resolved.blocks))
        if needs_key and key is None:
            raise ValueError("training mode (train=True) needs a PRNG key for dropout and "
                             "stochastic depth: call model(images, train=True, key=key)")
        x = self.extract_endpoints(images, train=train, key=key)["pooled"]
        if train and rate > 0:
            # A key of its own, distinct from every block's fold_in(key, block_index).
            dropout_key = jax.random.fold_in(key, self.resolved.num_blocks)
            keep = 1.0 - rate
            mask = jax.random.bernoulli(dropout_key, keep, x.shape)
            x = jnp.where(mask, x / keep, 0.0)
        if self.classifier is None:
            return x
        return self.classifier(x.astype(self.dtype)).astype(jnp.float32)

