"""scikit-learn's handwritten digits as a TFDS dataset, built offline in about a second.

The quickstart's and the tests' dataset: 1,797 real 8x8 images of handwritten digits (10
classes, about 180 each) that ship inside the scikit-learn package (`load_digits`, a copy of the
test set of the UCI ML "Optical Recognition of Handwritten Digits" dataset, E. Alpaydin and
C. Kaynak, 1998: 32x32 bitmaps from 13 writers, counted in 4x4 blocks to 17 grey levels).

Stored as 8x8 single-channel PNGs with the levels 0..16 scaled to 0..255
(`round(v * 255 / 16)`); the pipeline decodes them to RGB. Split deterministically by position:
every 5th example (index % 5 == 0) is "test" (360 images), the rest "train" (1,437 images), so
both splits cover all 10 classes in equal proportion. The splits share writers (the source set
has 13), so the test split measures generalisation to new images, not to new writers.

`prepare(data_dir)` writes it into `data_dir/sklearn_digits/1.0.0` the first time and reuses it
afterwards; nothing touches the network.
"""

from __future__ import annotations

import numpy as np

from effnetv2_jax._extras import require

tfds = require("tensorflow_datasets", "data")

NUM_TRAIN, NUM_TEST = 1437, 360
TEST_EVERY = 5


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images as uint8 `[n, 8, 8, 1]` (0..255) and their int labels `[n]`."""
    # A heavy import, only when building; the quickstart extra installs scikit-learn.
    load_digits = require("sklearn.datasets", "quickstart", "the digits dataset").load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


class SklearnDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's digits (UCI optdigits test set), 8x8 grey, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: train 1,437 / test 360 (index % 5 == 0)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
            }),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80/"
                     "optical+recognition+of+handwritten+digits",
            citation="E. Alpaydin, C. Kaynak. Optical Recognition of Handwritten Digits. "
                     "UCI Machine Learning Repository, 1998.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything comes from the installed scikit-learn package
        return {"train": self._generate_examples(test=False),
                "test": self._generate_examples(test=True)}

    def _generate_examples(self, test: bool):
        images, labels = digit_images()
        for index, (image, label) in enumerate(zip(images, labels)):
            if (index % TEST_EVERY == 0) == test:
                yield index, {"image": image, "label": label}


def prepare(data_dir: str | None) -> SklearnDigits:
    """The digits builder in `data_dir` (TFDS default if None), prepared if it is not yet."""
    builder = SklearnDigits(data_dir=data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare()
    return builder
