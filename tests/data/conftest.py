"""Tiny datasets built in the test session: a TFDS dataset (TFRecord and ArrayRecord), an image
folder with every supported mode plus bad files, and the digits. No network.
"""

import io
import os

import numpy as np
import pytest
from PIL import Image

from flat_images import EffnetTestTiny, flat_image


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """data_dir holding `effnet_test_tiny` prepared as TFRecord (TFDS's default)."""
    data_dir = str(tmp_path_factory.mktemp("tfds_tfrecord"))
    EffnetTestTiny(data_dir=data_dir).download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def array_record_dir(tmp_path_factory):
    """data_dir holding `effnet_test_tiny` prepared as ArrayRecord."""
    data_dir = str(tmp_path_factory.mktemp("tfds_array_record"))
    EffnetTestTiny(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds_digits"))


def _save(image: np.ndarray, path: str, mode: str, image_format: str) -> None:
    options = {"quality": 100} if image_format == "JPEG" else {}  # flat colours stay exact
    # An adaptive palette holds the flat colour exactly (the default web palette dithers).
    converted = Image.fromarray(image).convert(mode, **(
        {"palette": Image.Palette.ADAPTIVE} if mode == "P" else {}))
    converted.save(path, format=image_format, **options)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """root/train/<class>/ with 12 flat images in 6 formats/modes plus 3 bad files, and
    root/eval/<class>/ with 5 good images (ids 100.. in two classes)."""
    root = tmp_path_factory.mktemp("folder")
    formats = [("RGB", "JPEG", "jpg"), ("RGB", "PNG", "png"), ("L", "PNG", "png"),
               ("RGBA", "PNG", "png"), ("CMYK", "JPEG", "jpg"), ("P", "PNG", "png")]
    for split, ids in (("train", range(12)), ("eval", range(12, 17))):
        for i in ids:
            class_dir = root / split / f"class_{i % 2}"
            class_dir.mkdir(parents=True, exist_ok=True)
            mode, image_format, extension = formats[i % len(formats)]
            _save(flat_image(i), str(class_dir / f"img_{i:03d}.{extension}"), mode, image_format)
    bad = root / "train" / "class_1"
    encoded = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8)).save(
        encoded, format="JPEG")
    (bad / "truncated.jpg").write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 2])
    (bad / "notes.png").write_text("not an image")
    (bad / "empty.jpg").write_bytes(b"")
    (root / "train" / "class_0" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored
    return {"train": str(root / "train"), "eval": str(root / "eval"),
            "bad": sorted(os.path.join(str(bad), n) for n in ("empty.jpg", "notes.png",
                                                                "truncated.jpg"))}
