"""Bad data: an image folder holding every bad input of the issue. Each file is decoded to RGB
or skipped before training and named; training on the folder runs to the end."""

import logging

import numpy as np
import pytest

import harness
from conftest import tiny_config
from effnetv2_jax.data import (DataConfig, Preprocessing, clear_caches, dataset_info,
                               make_eval_iterator, make_train_iterator)
from effnetv2_jax.data.folder_source import list_folder, readable
from effnetv2_jax.train import loop


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_images")
    return root, harness.make_bad_image_folder(root)


def folder_config(root, **overrides):
    return DataConfig(source="folder", folder_root=str(root), folder_eval_root=str(root),
                      **overrides)


def test_each_bad_input_is_decoded_or_skipped_and_named(bad_folder, caplog):
    root, cases = bad_folder
    clear_caches()
    caplog.set_level(logging.WARNING)
    listing = list_folder(str(root))
    kept = {listing.paths[i] for i in readable(listing, np.arange(len(listing.paths)), False)}
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    for case, (path, expected) in cases.items():
        assert path in listing.paths, f"{case}: not even listed"
        if expected == "decoded":
            assert path in kept, case
        else:
            assert path not in kept, case
            assert f"skipping unreadable image file '{path}'" in warnings, case
    skipped = sum(expected == "skipped" for _, expected in cases.values())
    assert f"skipped {skipped} unreadable of {len(listing.paths)}" in warnings


def preprocess_all(root, cases, augment):
    config = folder_config(root, augment=augment)
    info = dataset_info(config)
    kept = info.num_train_examples - sum(e == "skipped" for _, e in cases.values())
    train = make_train_iterator(config, Preprocessing(), image_size=32, randaug_magnitude=10,
                                mixup_alpha=0.2, cutmix_alpha=0.2, global_batch_size=8,
                                start_step=0, seed=0)
    for _ in range(-(-kept // 8) + 1):                 # a whole epoch and more
        batch = next(train)
        assert batch["image"].shape == (8, 32, 32, 3) and np.isfinite(batch["image"]).all()
    train.close()
    count = sum(int(b["mask"].sum()) for b in make_eval_iterator(
        config, Preprocessing(), image_size=32, global_batch_size=8))
    assert count == kept


@pytest.mark.parametrize("augment", ["randaug", "none"])
def test_every_kept_image_goes_through_train_and_eval_preprocessing(bad_folder, augment):
    # The 1x1 image once made an empty eval centre crop (fixed in preprocess.py).
    preprocess_all(*bad_folder, augment)


@pytest.mark.slow  # a training run, end to end
def test_training_on_the_bad_folder_finishes(bad_folder, tmp_path, compile_cache):
    root, cases = bad_folder
    config = tiny_config(compile_cache)
    config.data.source = "folder"
    config.data.folder_root = config.data.folder_eval_root = str(root)
    config.train.num_steps = 4
    results = loop.train_and_evaluate(config, str(tmp_path))
    assert results["eval/examples"] == dataset_info(folder_config(root)).num_train_examples - sum(
        e == "skipped" for _, e in cases.values())
