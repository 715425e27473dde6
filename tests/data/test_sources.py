"""Each source (TFDS in its three read modes, folders, digits, synthetic) and every bad input."""

import logging
import os
import time

import numpy as np
import pytest

from effnetv2_jax.data import (DataConfig, Preprocessing, clear_caches, dataset_info,
                               make_eval_iterator, make_train_iterator)
from effnetv2_jax.data import digits_builder

from flat_images import NUM_CLASSES, NUM_TEST, NUM_TRAIN, example_ids

FLAT = Preprocessing(train_crop="resize")  # whole-image resize: flat images stay flat


def tiny(data_dir, **overrides):
    return DataConfig(source="tfds", name="effnet_test_tiny", data_dir=data_dir, augment="none",
                      **overrides)


def eval_batches(config, preprocess=FLAT, size=8, batch=4, **kwargs):
    return list(make_eval_iterator(config, preprocess, image_size=size, global_batch_size=batch,
                                   **kwargs))


def eval_ids_and_labels(config, **kwargs):
    batches = eval_batches(config, **kwargs)
    ids = np.concatenate([example_ids(b["image"][b["mask"]]) for b in batches])
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    return ids, labels


# --- TFDS ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["in memory", "streamed", "array_record"])
def test_tfds_eval_reads_every_test_example_once(tfds_dir, array_record_dir, mode):
    config = {"in memory": tiny(tfds_dir), "streamed": tiny(tfds_dir, cache=False),
              "array_record": tiny(array_record_dir)}[mode]
    ids, labels = eval_ids_and_labels(config)
    assert sorted(ids) == list(range(NUM_TRAIN, NUM_TRAIN + NUM_TEST))
    np.testing.assert_array_equal(labels, ids % NUM_CLASSES)


def test_tfds_dataset_info_by_name(tfds_dir):
    info = dataset_info(tiny(tfds_dir))
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (
        NUM_CLASSES, NUM_TRAIN, NUM_TEST)
    assert info.class_names == ("a", "b", "c")
    assert dataset_info(tiny(tfds_dir, train_split="train+test")).num_train_examples == 41


def test_unprepared_tfds_dataset_fails_fast_and_says_how_to_prepare(tmp_path):
    config = DataConfig(name="cifar10", data_dir=str(tmp_path))
    start = time.time()
    for call in (lambda: dataset_info(config),
                 lambda: make_train_iterator(config, Preprocessing(), image_size=32,
                                             randaug_magnitude=5, mixup_alpha=0, cutmix_alpha=0,
                                             global_batch_size=8, start_step=0, seed=0)):
        with pytest.raises(FileNotFoundError) as error:
            call()
        message = str(error.value)
        assert "'cifar10'" in message and str(tmp_path) in message
        assert f"tfds build cifar10 --data_dir={tmp_path}" in message
        assert "download=True" in message
    assert time.time() - start < 10  # no network retries
    assert not os.listdir(tmp_path)  # nothing downloaded or written


def test_unprepared_manual_dataset_names_the_manual_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="manual download.*downloads/manual"):
        dataset_info(DataConfig(name="imagenet2012", data_dir=str(tmp_path)))


def test_bad_tfds_names_splits_and_features(tfds_dir):
    with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
        dataset_info(DataConfig(name="no_such_dataset_xyz", data_dir=tfds_dir))
    with pytest.raises(ValueError, match=r"split 'validation' .*splits: \['train', 'test'\]"):
        dataset_info(tiny(tfds_dir, eval_split="validation"))
    features = r"\(features: \['id', 'image', 'label'\]\)"
    with pytest.raises(ValueError, match=r"no image feature 'img' " + features):
        dataset_info(tiny(tfds_dir, image_key="img"))
    with pytest.raises(ValueError, match="no class-label feature 'id'"):
        dataset_info(tiny(tfds_dir, label_key="id"))


# --- folders ---------------------------------------------------------------------------------

def folder(image_folder, **overrides):
    return DataConfig(source="folder", folder_root=image_folder["train"],
                      folder_eval_root=image_folder["eval"], augment="none", **overrides)


def test_folder_info_counts_files_and_sorted_classes(image_folder):
    info = dataset_info(folder(image_folder))
    assert info.class_names == ("class_0", "class_1")
    assert (info.num_train_examples, info.num_eval_examples) == (12 + 3, 5)  # bad files too


def test_folder_eval_decodes_every_mode_to_rgb(image_folder):
    ids, labels = eval_ids_and_labels(folder(image_folder))
    assert sorted(ids) == list(range(12, 17))
    np.testing.assert_array_equal(labels, ids % 2)


def test_folder_skips_unreadable_files_with_a_warning_naming_each(image_folder, caplog):
    clear_caches()  # warnings come with a folder's first scan in this process
    caplog.set_level(logging.WARNING)
    iterator = make_train_iterator(folder(image_folder), FLAT, image_size=8, randaug_magnitude=0,
                                   mixup_alpha=0, cutmix_alpha=0, global_batch_size=4,
                                   start_step=0, seed=0)
    ids = np.concatenate([example_ids(next(iterator)["image"]) for _ in range(3)])
    assert sorted(ids) == list(range(12))  # one epoch: the 12 readable images, each once
    for path in image_folder["bad"]:
        assert any(path in record.getMessage() for record in caplog.records), path
    assert any("skipped 3 unreadable of 15" in record.getMessage() for record in caplog.records)


def test_folder_strict_stops_at_the_first_unreadable_file(image_folder):
    with pytest.raises(ValueError, match="unreadable image file '.*empty.jpg'.*strict=True"):
        make_train_iterator(folder(image_folder, strict=True), FLAT, image_size=8,
                            randaug_magnitude=0, mixup_alpha=0, cutmix_alpha=0,
                            global_batch_size=4, start_step=0, seed=0)


def test_missing_and_empty_folders_fail_with_their_path(tmp_path, image_folder):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"image folder '{missing}' does not exist"):
        dataset_info(DataConfig(source="folder", folder_root=missing))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="has no class folders"):
        dataset_info(DataConfig(source="folder", folder_root=str(tmp_path / "flat")))
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has class folders but no image files"):
        dataset_info(DataConfig(source="folder", folder_root=str(tmp_path / "hollow")))
    with pytest.raises(ValueError, match=r"classes \['cat'\] .* are not training classes"):
        dataset_info(DataConfig(source="folder", folder_root=image_folder["train"],
                                folder_eval_root=str(tmp_path / "hollow")))
    with pytest.raises(ValueError, match="set DataConfig.folder_eval_root"):
        eval_batches(DataConfig(source="folder", folder_root=image_folder["train"]))


# --- digits and synthetic --------------------------------------------------------------------

def test_digits_are_the_real_sklearn_images_split_train_1437_test_360(digits_dir):
    config = DataConfig(source="digits", data_dir=digits_dir, augment="none")
    start = time.time()
    info = dataset_info(config)
    assert time.time() - start < 30  # prepared offline in seconds
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (10, 1437, 360)
    assert os.path.isdir(os.path.join(digits_dir, "sklearn_digits", "1.0.0"))
    batches = eval_batches(config, size=8, batch=120)  # whole-image resize 8 -> 8: exact
    pixels = np.concatenate([np.round(b["image"][..., 0] * 128 + 128) for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    images, targets = digits_builder.digit_images()
    expected = {(images[i, ..., 0].tobytes(), targets[i]) for i in range(0, len(images), 5)}
    got = {(p.astype(np.uint8).tobytes(), label) for p, label in zip(pixels, labels)}
    assert got == expected and len(got) == 360


def test_synthetic_labels_images_and_disjoint_eval():
    config = DataConfig(source="synthetic", synthetic_num_classes=4, synthetic_num_examples=20,
                        synthetic_num_eval_examples=6, synthetic_image_size=12, augment="none")
    info = dataset_info(config)
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (4, 20, 6)
    [batch] = eval_batches(config, preprocess=Preprocessing(train_crop="resize"), size=12, batch=6)
    np.testing.assert_array_equal(batch["label"], np.arange(20, 26) % 4)
    again = eval_batches(config, preprocess=Preprocessing(train_crop="resize"), size=12, batch=6)[0]
    np.testing.assert_array_equal(batch["image"], again["image"])
    # Same class: same colour under the noise; different classes: different colours.
    means = batch["image"].mean(axis=(1, 2))
    assert np.abs(means[0] - means[4]).max() < 0.1 < np.abs(means[0] - means[1]).max()
