"""Flat test images: every pixel of example i has the value `pixel_value(i)`, so a preprocessed
batch without augmentation tells which examples it holds (`example_ids`), whatever the crop,
flip or resize. Also the tiny TFDS builder made of them (fixtures in conftest.py).
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN, NUM_TEST, NUM_CLASSES = 30, 11, 3


def pixel_value(example_id: int) -> int:
    return 3 + 5 * example_id


def example_ids(images: np.ndarray, mean: float = 128.0, std: float = 128.0) -> np.ndarray:
    """The ids of flat example images in a normalised batch `[b, h, w, 3]`.

    Allows 2 levels of decoding error (CMYK JPEG); ids are 5 levels apart.
    """
    if len(images) == 0:
        return np.zeros([0], int)
    pixels = images.reshape(len(images), -1) * std + mean
    ids = np.round((pixels.mean(axis=1) - 3) / 5).astype(int)
    assert np.abs(pixels - (3 + 5 * ids)[:, None]).max() <= 2, "not a batch of flat images"
    return ids


def flat_image(example_id: int) -> np.ndarray:
    """Example `example_id`: a flat RGB image whose size varies with the id."""
    shape = (6 + example_id % 5, 7 + example_id % 3, 3)
    return np.full(shape, pixel_value(example_id), np.uint8)


class EffnetTestTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """30 train / 11 test flat images, 3 classes; label = id % 3."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                "id": tfds.features.Scalar(np.int64),
            }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(NUM_TRAIN)),
                "test": self._generate_examples(range(NUM_TRAIN, NUM_TRAIN + NUM_TEST))}

    def _generate_examples(self, ids):
        for i in ids:
            yield i, {"image": flat_image(i), "label": i % NUM_CLASSES, "id": i}


def multi_labels(example_id: int) -> list[int]:
    """Classes of multi-label example `example_id`: 0 to 2 of the 4, some repeated, one empty."""
    if example_id % 7 == 6:
        return []
    first = example_id % 4
    return [first, (first + 1 + example_id % 3) % 4, first][: 1 + example_id % 3]


class EffnetTestMultiLabel(EffnetTestTiny, skip_registration=True):
    """EffnetTestTiny's images with 4 classes, `labels` = Sequence(ClassLabel) as in 21k."""

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "labels": tfds.features.Sequence(tfds.features.ClassLabel(num_classes=4)),
                "id": tfds.features.Scalar(np.int64),
            }))

    def _generate_examples(self, ids):
        for i in ids:
            yield i, {"image": flat_image(i), "labels": multi_labels(i), "id": i}
