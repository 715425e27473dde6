"""What to read (`DataConfig`); how a model's weights want their pixels is `Preprocessing`.

`DataConfig` is a frozen dataclass: build one with keywords (or `DataConfig(**config_dict)` from
an ml_collections config) and change one field with `dataclasses.replace`. Fields are checked
when the object is built, so a typo fails at start-up with the valid choices in the message.

`Preprocessing` (effnetv2_jax/preprocessing.py, re-exported here) is the same type the model
registry attaches to each variant; the training loop passes a variant's, with the recipe's
training crop, to the pipeline. The data package never imports the model, and normalisation
happens here, once, never inside the model.
"""

from __future__ import annotations

import dataclasses

from effnetv2_jax.preprocessing import Preprocessing

SOURCES = ("tfds", "folder", "digits", "synthetic")
AUGMENTS = ("randaug", "autoaug", "ft", "none")


def _check_choice(field: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {field} {value!r} (valid: {', '.join(valid)})")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which images to read and how to augment them for training.

    Attributes:
      source: "tfds" (a prepared TFDS dataset), "folder" (`root/<class>/<image>`), "digits"
        (scikit-learn's 1,797 handwritten digits, prepared offline into `data_dir` on first use)
        or "synthetic" (images generated from their index; no files).
      name: TFDS dataset name, e.g. "imagenet2012", "cifar10", "oxford_flowers102" (source="tfds").
      data_dir: TFDS data directory; None = TFDS's default (`$TFDS_DATA_DIR` or
        `~/tensorflow_datasets`). The digits dataset is prepared here too.
      train_split, eval_split: TFDS split expressions ("train", "train+validation",
        "train[:90%]"); eval_split None picks "validation" when the dataset has it, else "test".
      image_key, label_key: feature names in the TFDS dataset. The label feature is a
        `ClassLabel` (one class per image) or a `Sequence(ClassLabel)` (multi-label, such as
        ImageNet-21k's `labels`): targets are then multi-hot vectors.
      normalize_multi_hot: multi-label targets divided by their label count, so each sums to 1
        (paper section 5.2 and the official `multiclass=True`; for softmax cross-entropy).
        False keeps 0/1 multi-hot targets (for the sigmoid loss of the published 21k weights).
      folder_root: training images, `folder_root/<class name>/<image file>` (source="folder").
        Class ids are the sorted class-folder names.
      folder_eval_root: evaluation images in the same layout; its classes must exist in
        folder_root. None = no evaluation set.
      download: let TFDS download and prepare a dataset that is not prepared yet (needs network).
        False (default) fails within seconds instead, naming the data_dir searched.
      strict: folders only: stop at the first unreadable image file (naming it) instead of
        skipping it with a warning.
      synthetic_num_classes, synthetic_num_examples, synthetic_num_eval_examples,
        synthetic_image_size: shape of the synthetic dataset (image side in pixels).
      cache: TFDS datasets stored as TFRecord: hold this process's encoded records in host memory
        (random access: resuming at any step is instant) when they fit `cache_max_gb`. False, or
        a share over the budget, streams them from disk instead, with a `shuffle_buffer`-sized
        shuffle, and resuming re-reads the epoch up to the resume point. Datasets prepared as
        ArrayRecord are read by index from disk either way.
      cache_max_gb: the most encoded data (GB, 1e9 bytes) `cache` may hold per process, checked
        against the size the dataset's metadata gives before anything is read; 0 = a quarter of
        this host's physical memory. ImageNet's train split is about 140 GB.
      shuffle_buffer: examples per shuffle window when streaming (cache=False); a window's
        encoded records sit in memory (ImageNet: about 110 KB each). Unused otherwise:
        random-access sources shuffle the whole epoch.
      randaug_layers: RandAugment N: ops applied to each training image (official: 2).
      augment: "randaug" (V2 S-XL), "autoaug" (AutoAugment policy v0, B-series / V1), "ft" (the
        fine-tune recipe's cutout) or "none" (crop and flip only).
      random_flip: random horizontal flips in training (official: on; turn off for digits,
        text and other data that a mirror changes).
      min_crop_area: smallest area fraction of the training crop; 0 = the official value of the
        crop in use (0.05 for V2, 0.08 for the legacy crop). Small images need a larger one.
      num_parallel_calls: parallelism of per-example preprocessing; -1 = tf.data AUTOTUNE.
      prefetch: batches prepared ahead of the training step.
    """

    source: str = "tfds"
    name: str = ""
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str | None = None
    image_key: str = "image"
    label_key: str = "label"
    normalize_multi_hot: bool = True
    folder_root: str | None = None
    folder_eval_root: str | None = None
    download: bool = False
    strict: bool = False
    synthetic_num_classes: int = 10
    synthetic_num_examples: int = 1024
    synthetic_num_eval_examples: int = 256
    synthetic_image_size: int = 64
    cache: bool = True
    cache_max_gb: float = 0.0
    shuffle_buffer: int = 16_384
    randaug_layers: int = 2
    augment: str = "randaug"
    random_flip: bool = True
    min_crop_area: float = 0.0
    num_parallel_calls: int = -1
    prefetch: int = 2

    def __post_init__(self):
        _check_choice("source", self.source, SOURCES)
        _check_choice("augment", self.augment, AUGMENTS)
        if self.source == "tfds" and not self.name:
            raise ValueError("source='tfds' needs a dataset name, e.g. DataConfig(name='cifar10')")
        if self.source == "folder" and not self.folder_root:
            raise ValueError("source='folder' needs folder_root (images as root/<class>/<image>)")
        for field in ("synthetic_num_classes", "synthetic_num_examples", "synthetic_image_size",
                      "shuffle_buffer", "prefetch"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.cache_max_gb < 0:
            raise ValueError(f"cache_max_gb must be >= 0 (0 = a quarter of host memory), got "
                             f"{self.cache_max_gb}")
        if not 0.0 <= self.min_crop_area <= 1.0:
            raise ValueError(f"min_crop_area must be in [0, 1], got {self.min_crop_area}")
        if self.synthetic_num_eval_examples < 0 or self.randaug_layers < 0:
            raise ValueError("synthetic_num_eval_examples and randaug_layers must be >= 0")
        if self.num_parallel_calls != -1 and self.num_parallel_calls < 1:
            raise ValueError(f"num_parallel_calls must be -1 (AUTOTUNE) or >= 1, "
                             f"got {self.num_parallel_calls}")


# The old name of `Preprocessing` (one type, shared with the model registry).
Preprocess = Preprocessing
