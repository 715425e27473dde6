"""The bridge from a training config and a model variant to the data pipelines.

Data code never imports the model: the variant's `Preprocessing` (effnetv2_jax/preprocessing.py,
the type the data pipeline takes) is passed on here with the recipe's crop, so each variant's
weights get the normalisation and crop they were trained with, applied once.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from effnetv2_jax import data
from effnetv2_jax.models.variants import Variant
from effnetv2_jax.preprocessing import Preprocessing


_OPTIONAL = ("data_dir", "eval_split", "folder_root", "folder_eval_root")


def data_config(config: ml_collections.ConfigDict) -> "data.DataConfig":
    """`config.data` -> `DataConfig` ("" means None for the optional paths and splits); an
    unknown field raises naming it and the valid ones."""
    fields = {f.name for f in dataclasses.fields(data.DataConfig)}
    values = config.data.to_dict()
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"config.data has keys the data pipeline does not know: {unknown} "
                         f"(valid: {', '.join(sorted(fields))})")
    values.update({k: values[k] or None for k in _OPTIONAL if k in values})
    return data.DataConfig(**values)


def preprocess_for(config: ml_collections.ConfigDict, variant: Variant) -> Preprocessing:
    """The variant's preprocessing; the fine-tune recipe ("ft") resizes whole images, otherwise
    the crop follows the interpolation (bilinear V2 S-XL: 5-100% area; bicubic: legacy crop).
    `config.preprocess.crop_padding` >= 0 replaces the eval crop padding."""
    pre = Preprocessing.from_metadata(
        variant.preprocessing, train_crop="resize" if config.data.augment == "ft" else None)
    if config.preprocess.crop_padding >= 0:
        pre = dataclasses.replace(pre, crop_padding=config.preprocess.crop_padding)
    return pre
