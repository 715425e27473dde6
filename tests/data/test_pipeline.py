"""The iterators: determinism, exact resume, per-process split, eval coverage, stages, close."""

import dataclasses
import gc
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from effnetv2_jax.data import DataConfig, Preprocessing, make_eval_iterator, make_train_iterator
from effnetv2_jax.data import mixing, seeds

from flat_images import NUM_CLASSES, NUM_TEST, NUM_TRAIN, example_ids

FLAT = Preprocessing(train_crop="resize")


def tiny(data_dir, **overrides):
    return DataConfig(source="tfds", name="effnet_test_tiny", data_dir=data_dir, **overrides)


def train(config, steps, start_step=0, preprocess=Preprocessing(), **overrides):
    args = dict(image_size=16, randaug_magnitude=9.0, mixup_alpha=0.0, cutmix_alpha=0.0,
                global_batch_size=4, start_step=start_step, seed=7)
    args.update(overrides)
    with make_train_iterator(config, preprocess, **args) as iterator:
        return [next(iterator) for _ in range(steps)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(params=["tfds in memory", "tfds streamed", "tfds array_record", "folder",
                        "synthetic"])
def any_source(request, tfds_dir, array_record_dir, image_folder):
    """(name, config) for each way of reading."""
    return request.param, {"tfds in memory": tiny(tfds_dir),
            "tfds streamed": tiny(tfds_dir, cache=False, shuffle_buffer=8),
            "tfds array_record": tiny(array_record_dir),
            "folder": DataConfig(source="folder", folder_root=image_folder["train"]),
            "synthetic": DataConfig(source="synthetic", synthetic_num_examples=30,
                                    synthetic_image_size=20)}[request.param]


def test_restart_mid_epoch_reproduces_the_stream_bit_for_bit(any_source):
    """Mixup and CutMix on, random crops and flips, and RandAugment (in-memory TFDS; the
    others use the fine-tune cutout, cheaper to build). 30 examples / local batch 4: the
    restart at step 5 is mid-epoch, and epoch 1 starts inside step 7."""
    name, config = any_source
    config = dataclasses.replace(config, augment="randaug" if name == "tfds in memory" else "ft")
    mixed = dict(mixup_alpha=0.4, cutmix_alpha=0.4)
    uninterrupted = train(config, 9, **mixed)
    resumed = train(config, 4, start_step=5, **mixed)
    assert_same_batches(uninterrupted[5:], resumed)
    assert not np.array_equal(uninterrupted[5]["image"], uninterrupted[6]["image"])


def test_the_seed_changes_the_stream(tfds_dir):
    config = tiny(tfds_dir, augment="ft")
    a, b = train(config, 1), train(config, 1, seed=8)
    assert not np.array_equal(a[0]["image"], b[0]["image"])


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.4, 0.0), (0.4, 0.4)])
def test_mixed_batches_are_the_official_batch_mixing_of_the_stream(tfds_dir, mixup_alpha,
                                                                   cutmix_alpha):
    """The pipeline mixes pair by pair; the result is the batch reference, rows pair by pair.
    Local batch 6 with both on: halves of 3, whose middle examples pair with themselves."""
    config = tiny(tfds_dir, augment="ft")
    args = dict(global_batch_size=6, image_size=16)
    plain = train(config, 3, **args)  # no mixing: rows in stream order
    mixed = train(config, 3, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, **args)
    both = cutmix_alpha > 0
    rows = mixing.pair_rows(6, both)
    for step, (unmixed, batch) in enumerate(zip(plain, mixed)):
        plan = mixing.make_plan(6, 16, 16, mixup_alpha, cutmix_alpha,
                                seeds.key(7, seeds.MIX, step, 0))
        images, labels = mixing.mix_batch(tf.constant(unmixed["image"]),
                                          tf.constant(unmixed["label"]), plan, both)
        np.testing.assert_array_equal(batch["image"], images.numpy()[rows])
        np.testing.assert_allclose(batch["label"], labels.numpy()[rows], atol=1e-7)
        assert not np.array_equal(batch["image"], unmixed["image"][rows])


def test_batches_have_the_documented_shapes_and_soft_labels(tfds_dir):
    [batch] = train(tiny(tfds_dir, augment="none"), 1, image_size=24, global_batch_size=6,
                    mixup_alpha=0.3)
    assert batch["image"].shape == (6, 24, 24, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (6, NUM_CLASSES) and batch["label"].dtype == np.float32
    np.testing.assert_allclose(batch["label"].sum(1), 1, atol=1e-6)
    assert np.abs(batch["image"]).max() <= 1.0  # (x - 128) / 128


def test_each_epoch_is_a_new_permutation_of_the_data(tfds_dir):
    config = tiny(tfds_dir, augment="none")
    batches = train(config, 12, preprocess=FLAT, global_batch_size=5)  # 6 steps per epoch
    ids = np.concatenate([example_ids(b["image"]) for b in batches])
    first, second = ids[:NUM_TRAIN], ids[NUM_TRAIN:]
    assert sorted(first) == sorted(second) == list(range(NUM_TRAIN))
    assert not np.array_equal(first, second)
    labels = np.concatenate([b["label"].argmax(1) for b in batches])
    np.testing.assert_array_equal(labels, ids % NUM_CLASSES)  # labels travel with images


@pytest.mark.parametrize("source", ["tfds", "tfds streamed", "tfds array_record", "folder",
                                    "synthetic"])
def test_two_processes_read_disjoint_parts_that_cover_the_split(source, tfds_dir,
                                                                array_record_dir, image_folder):
    config, total = {
        "tfds": (tiny(tfds_dir, augment="none"), NUM_TRAIN),
        "tfds streamed": (tiny(tfds_dir, augment="none", cache=False, shuffle_buffer=4),
                          NUM_TRAIN),
        "tfds array_record": (tiny(array_record_dir, augment="none"), NUM_TRAIN),
        "folder": (DataConfig(source="folder", folder_root=image_folder["train"],
                              augment="none"), 12),
        "synthetic": (DataConfig(source="synthetic", synthetic_num_examples=30,
                                 synthetic_num_classes=30, augment="none"), 30),
    }[source]
    seen = []
    for process in range(2):
        batches = train(config, 8, preprocess=FLAT, process_index=process, process_count=2)
        assert batches[0]["image"].shape[0] == 2  # global batch 4 over 2 processes
        if source == "synthetic":  # label = example index (30 classes)
            ids = np.concatenate([b["label"].argmax(1) for b in batches])
        else:
            ids = np.concatenate([example_ids(b["image"]) for b in batches])
        part = total // 2
        assert len(set(ids[:part])) == part  # one epoch of this process's part, no repeats
        assert set(ids) == set(ids[:part])  # the next epoch revisits the same part
        seen.append(set(ids[:part]))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == total


@pytest.mark.parametrize("process_count,global_batch,mode", [
    (1, 4, "in memory"), (2, 4, "in memory"), (3, 3, "in memory"), (2, 10, "in memory"),
    (2, 4, "streamed"), (3, 3, "array_record")])
def test_eval_covers_every_example_once_with_the_same_batch_count(tfds_dir, array_record_dir,
                                                                  process_count, global_batch,
                                                                  mode):
    config = {"in memory": tiny(tfds_dir, augment="none"),
              "streamed": tiny(tfds_dir, augment="none", cache=False),
              "array_record": tiny(array_record_dir, augment="none")}[mode]
    ids, counts = [], set()
    for process in range(process_count):
        iterator = make_eval_iterator(config, FLAT, image_size=8, global_batch_size=global_batch,
                                      process_index=process, process_count=process_count)
        batches = list(iterator)
        counts.add(len(batches))
        assert len(batches) == len(iterator)
        for batch in batches:
            assert batch["image"].shape[0] == global_batch // process_count
            assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool
            assert np.all(batch["image"][~batch["mask"]] == 0)  # padding: blank images
            ids.extend(example_ids(batch["image"][batch["mask"]]))
            np.testing.assert_array_equal(batch["label"][batch["mask"]],
                                          example_ids(batch["image"][batch["mask"]]) % 3)
    assert len(counts) == 1  # every process runs the same number of eval steps
    assert sorted(ids) == list(range(NUM_TRAIN, NUM_TRAIN + NUM_TEST))


def test_eval_with_more_processes_than_examples_still_lines_up():
    config = DataConfig(source="synthetic", synthetic_num_eval_examples=3, augment="none")
    masks = [[b["mask"] for b in make_eval_iterator(config, FLAT, image_size=8,
                                                    global_batch_size=4, process_index=p,
                                                    process_count=4)] for p in range(4)]
    assert {len(m) for m in masks} == {1}
    assert sum(int(m[0].sum()) for m in masks) == 3


def test_a_new_stage_continues_the_same_example_order(tfds_dir):
    """Progressive learning: at a stage boundary only size, magnitude and alphas change."""
    config = tiny(tfds_dir, augment="none")
    stage_1 = train(config, 6, preprocess=FLAT, image_size=12)
    stage_2 = train(config, 3, start_step=3, preprocess=FLAT, image_size=20)
    for old, new in zip(stage_1[3:], stage_2):
        np.testing.assert_array_equal(example_ids(old["image"]), example_ids(new["image"]))
        assert new["image"].shape[1] == 20


def test_bad_batch_and_process_arguments_are_refused(tfds_dir):
    config = tiny(tfds_dir)
    with pytest.raises(ValueError, match="global_batch_size 6 must be a positive multiple of "
                                         "process_count 4"):
        train(config, 1, global_batch_size=6, process_count=4)
    with pytest.raises(ValueError, match=r"process_index 2 is not in \[0, process_count = 2\)"):
        train(config, 1, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="global_batch_size 5 must be a positive multiple"):
        make_eval_iterator(config, FLAT, image_size=8, global_batch_size=5, process_count=2)
    with pytest.raises(ValueError, match="local batch of at least 2"):
        train(config, 1, global_batch_size=2, process_count=2, mixup_alpha=0.2,
              cutmix_alpha=0.2)


def _threads():
    return len(os.listdir("/proc/self/task"))


def test_close_stops_the_stream_and_releases_its_threads():
    config = DataConfig(source="synthetic", synthetic_num_examples=64, synthetic_image_size=16,
                        augment="none")
    args = dict(image_size=16, randaug_magnitude=0, mixup_alpha=0.2, cutmix_alpha=0,
                global_batch_size=8, start_step=0, seed=0)
    train(config, 1, **args)  # TF's process-wide thread pools start once
    gc.collect()
    baseline = _threads()
    for _ in range(3):
        iterator = make_train_iterator(config, Preprocessing(), **args)
        next(iterator)
        assert _threads() > baseline  # the pipeline's own threads
        iterator.close()
        with pytest.raises(StopIteration):
            next(iterator)
        deadline = time.time() + 5
        while _threads() > baseline and time.time() < deadline:
            time.sleep(0.05)
        assert _threads() <= baseline
