"""Input pipelines (tf.data): sources, official preprocessing and augmentation, resumable streams.

    from effnetv2_jax.data import DataConfig, Preprocessing, dataset_info, make_train_iterator

| module                | job                                                             |
|-----------------------|-----------------------------------------------------------------|
| `config.py`           | `DataConfig` (what to read); `Preprocessing` (a weight's pixels) |
| `sources.py`          | `dataset_info`, this process's part of a split, for any source  |
| `tfds_source.py`, `folder_source.py`, `synthetic_source.py`, `digits_builder.py` | the sources |
| `shard.py`            | the random-access / streaming interface every source provides   |
| `labels.py`           | class ids or multi-hot (21k) labels -> training targets         |
| `preprocess.py`       | crop, resize, flip, normalise (train and eval)                  |
| `augment_ops.py`      | the 16 image ops; `randaugment.py`: RandAugment, AutoAugment v0 |
| `mixing.py`           | mixup and CutMix                                                |
| `seeds.py`            | where every random number comes from                            |
| `pipeline.py`         | `make_train_iterator`, `make_eval_iterator`                     |

This package never imports the model: the training loop copies a variant's preprocessing
metadata into `Preprocessing.from_metadata`.
"""

from effnetv2_jax._extras import lazy_exports

# Imported on first use (PEP 562): `config` needs no TensorFlow, the pipeline does
# (`pip install 'effnetv2_jax[data]'`).
_EXPORTS = {
    "DataConfig": "config", "Preprocessing": "config", "Preprocess": "config",  # old name
    "Batches": "pipeline", "DatasetInfo": "pipeline", "dataset_info": "pipeline",
    "make_eval_iterator": "pipeline", "make_train_iterator": "pipeline",
    "clear_caches": "sources",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
