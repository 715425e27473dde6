"""One entry point per question: what is in a dataset (`dataset_info`), and this process's part of
a split (`open_shard`), whatever the source.

| source    | module               | examples come from                                     |
|-----------|----------------------|--------------------------------------------------------|
| tfds      | `tfds_source.py`     | a prepared TFDS dataset in `data_dir` (never downloads |
|           |                      | unless `download=True`)                                |
| folder    | `folder_source.py`   | `root/<class>/<image>` files                           |
| digits    | `digits_builder.py`  | scikit-learn's digits, prepared offline into data_dir  |
| synthetic | `synthetic_source.py`| generated from the example index                       |
"""

from __future__ import annotations

import dataclasses

from effnetv2_jax.data import digits_builder, folder_source, tfds_source
from effnetv2_jax.data.config import DataConfig
from effnetv2_jax.data.shard import Shard
from effnetv2_jax.data.synthetic_source import SyntheticShard


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the training loop needs to know about a dataset.

    Attributes:
      num_classes: classes (the width of the soft-target labels).
      num_train_examples: examples in the training split (all processes together). For folders,
        files found, before unreadable ones are dropped.
      num_eval_examples: examples in the evaluation split; 0 if there is none.
      class_names: one name per class id.
      multi_label: examples list several classes (a TFDS `Sequence(ClassLabel)` label):
        targets, train and eval, are multi-hot float32 [num_classes] rather than class ids.
    """

    num_classes: int
    num_train_examples: int
    num_eval_examples: int
    class_names: tuple[str, ...]
    multi_label: bool = False


def _builder(config: DataConfig):
    if config.source == "digits":
        return digits_builder.prepare(config.data_dir)
    return tfds_source.load_builder(config)


def dataset_info(config: DataConfig) -> DatasetInfo:
    """Reads the dataset's metadata; fails within seconds, with a message saying what to do, when
    a TFDS dataset is not prepared or a folder is missing or empty."""
    if config.source == "synthetic":
        return DatasetInfo(config.synthetic_num_classes, config.synthetic_num_examples,
                           config.synthetic_num_eval_examples,
                           tuple(str(c) for c in range(config.synthetic_num_classes)))
    if config.source == "folder":
        train = folder_source.list_folder(config.folder_root)
        num_eval = 0
        if config.folder_eval_root:
            num_eval = len(folder_source.list_folder(config.folder_eval_root,
                                                     train.class_names).paths)
        return DatasetInfo(len(train.class_names), len(train.paths), num_eval, train.class_names)
    builder = _builder(config)
    labels = tfds_source.check_features(builder, config.image_key, config.label_key)
    train_split = tfds_source.resolve_split(builder, config.train_split)
    try:
        eval_split = tfds_source.resolve_split(builder, config.eval_split)
        num_eval = tfds_source.num_examples(builder, eval_split)
    except ValueError:
        if config.eval_split is not None:
            raise
        num_eval = 0  # no default eval split: fine for training, make_eval_iterator explains
    return DatasetInfo(labels.num_classes, tfds_source.num_examples(builder, train_split),
                       num_eval, labels.names, labels.multi_label)


def open_shard(config: DataConfig, train: bool, process_index: int, process_count: int) -> Shard:
    """This process's part of the training (`train=True`) or evaluation split."""
    if config.source == "synthetic":
        if train:
            return SyntheticShard(0, config.synthetic_num_examples, config.synthetic_num_classes,
                                  config.synthetic_image_size, process_index, process_count)
        return SyntheticShard(config.synthetic_num_examples, config.synthetic_num_eval_examples,
                              config.synthetic_num_classes, config.synthetic_image_size,
                              process_index, process_count)
    if config.source == "folder":
        listing = folder_source.list_folder(config.folder_root)
        if not train:
            if not config.folder_eval_root:
                raise ValueError("no evaluation images: set DataConfig.folder_eval_root "
                                 "(images as root/<class>/<image>)")
            listing = folder_source.list_folder(config.folder_eval_root, listing.class_names)
        return folder_source.FolderShard(listing, process_index, process_count, config.strict)
    builder = _builder(config)
    split = tfds_source.resolve_split(builder, config.train_split if train else config.eval_split)
    return tfds_source.open_shard(builder, config, split, process_index, process_count)


def clear_caches() -> None:
    """Frees what sources keep for later stages (in-memory records, folder scan results)."""
    tfds_source.clear_cache()
    folder_source.clear_cache()
