"""A TFDS data_dir and an image folder on gs://, against the local GCS emulator (`gcs_dir`):
the same examples, in the same order, as from the local copy. TFRecord files are read through
etils.epath (TensorFlow's file layer cannot reach an emulator), ArrayRecord by its own reader."""

import os

import numpy as np
import pytest

from effnetv2_jax import paths
from effnetv2_jax.data import clear_caches, dataset_info, make_train_iterator
from effnetv2_jax.data.tfds_source import _read_tfrecords

from flat_images import NUM_CLASSES, NUM_TEST, NUM_TRAIN, example_ids
from test_sources import FLAT, eval_ids_and_labels, folder, tiny


@pytest.fixture
def remote_tfds(tfds_dir, gcs_dir):
    paths.copy_tree(tfds_dir, gcs_dir / "tfds")
    clear_caches()
    yield str(gcs_dir / "tfds")
    clear_caches()


def train_ids(config, steps=4):
    with make_train_iterator(config, FLAT, image_size=8, randaug_magnitude=0, mixup_alpha=0,
                             cutmix_alpha=0, global_batch_size=4, start_step=0,
                             seed=0) as iterator:
        return np.concatenate([example_ids(next(iterator)["image"]) for _ in range(steps)])


@pytest.mark.parametrize("cache", [True, False], ids=["in memory", "streamed"])
def test_a_tfds_data_dir_on_gs_reads_as_the_local_one(remote_tfds, tfds_dir, cache):
    info = dataset_info(tiny(remote_tfds, cache=cache))
    assert (info.num_train_examples, info.num_classes) == (NUM_TRAIN, NUM_CLASSES)
    ids, labels = eval_ids_and_labels(tiny(remote_tfds, cache=cache))
    assert sorted(ids) == list(range(NUM_TRAIN, NUM_TRAIN + NUM_TEST))
    np.testing.assert_array_equal(labels, ids % NUM_CLASSES)
    if not cache:  # the stream's order (files, windows) is the one the local copy gives
        remote = train_ids(tiny(remote_tfds, cache=cache), steps=3)
        np.testing.assert_array_equal(remote, train_ids(tiny(tfds_dir, cache=cache), steps=3))


def test_an_array_record_data_dir_on_gs_reads_as_the_local_one(array_record_dir, gcs_dir):
    """ArrayRecord's own reader opens gs:// (google-cloud-cpp, pointed at the emulator)."""
    paths.copy_tree(array_record_dir, gcs_dir / "tfds")
    ids, labels = eval_ids_and_labels(tiny(str(gcs_dir / "tfds")))
    assert sorted(ids) == list(range(NUM_TRAIN, NUM_TRAIN + NUM_TEST))
    np.testing.assert_array_equal(labels, ids % NUM_CLASSES)
    remote = train_ids(tiny(str(gcs_dir / "tfds")))
    np.testing.assert_array_equal(remote, train_ids(tiny(array_record_dir)))


def test_a_truncated_tfrecord_fails_naming_the_file(tfds_dir, gcs_dir):
    local = next(p for p in paths.resolve(tfds_dir).glob("*/*/*.tfrecord-*"))
    records = list(_read_tfrecords(os.fspath(local)))
    assert len(records) in (NUM_TRAIN, NUM_TEST)
    remote = gcs_dir / "cut.tfrecord"
    remote.write_bytes(local.read_bytes()[:-10])
    with pytest.raises(OSError, match="cut.tfrecord: truncated TFRecord"):
        list(_read_tfrecords(os.fspath(remote)))


def test_an_image_folder_on_gs_reads_as_the_local_one(image_folder, gcs_dir, caplog):
    root = gcs_dir / "folder"
    for split in ("train", "eval"):
        paths.copy_tree(image_folder[split], root / split)
    clear_caches()
    remote = folder({"train": str(root / "train"), "eval": str(root / "eval")})
    local = folder(image_folder)
    assert dataset_info(remote) == dataset_info(local)
    ids, labels = eval_ids_and_labels(remote)
    assert sorted(ids) == list(range(12, 17))
    np.testing.assert_array_equal(labels, ids % 2)
    caplog.set_level("WARNING")
    remote_ids = train_ids(remote, steps=3)
    assert sorted(remote_ids) == list(range(12))      # the 3 unreadable files are skipped ...
    for name in ("empty.jpg", "notes.png", "truncated.jpg"):   # ... and named
        assert any(f"{root}/train/class_1/{name}" in r.getMessage() for r in caplog.records)
    clear_caches()
    np.testing.assert_array_equal(remote_ids, train_ids(local, steps=3))
