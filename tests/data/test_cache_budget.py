"""`data.cache` holds a TFRecord dataset in memory only when the metadata says it fits."""

import logging

import numpy as np
import pytest

from effnetv2_jax.data import (DataConfig, Preprocessing, clear_caches, make_eval_iterator,
                               tfds_source)
from effnetv2_jax.data.shard import MemoryShard

from flat_images import NUM_TEST, NUM_TRAIN, example_ids


def config(data_dir, **overrides):
    return DataConfig(source="tfds", name="effnet_test_tiny", data_dir=data_dir, augment="none",
                      **overrides)


def shard(data_dir, process_index=0, process_count=1, **overrides):
    clear_caches()
    cfg = config(data_dir, **overrides)
    builder = tfds_source.load_builder(cfg)
    return tfds_source.open_shard(builder, cfg, "train", process_index, process_count)


def test_estimate_is_the_parts_examples_at_the_recorded_bytes_per_example(tfds_dir):
    builder = tfds_source.load_builder(config(tfds_dir))
    splits = builder.info.splits
    per_example = (int(splits["train"].num_bytes) + int(splits["test"].num_bytes)) / (
        NUM_TRAIN + NUM_TEST)
    assert per_example > 0
    assert tfds_source.encoded_bytes(builder, "train") == int(NUM_TRAIN * per_example)
    # Expressions and a process's part (TFDS records no size for them) scale by examples.
    half = tfds_source.encoded_bytes(builder, "train[:50%]")
    assert half == int(NUM_TRAIN // 2 * per_example)
    both = tfds_source.encoded_bytes(builder, "train+test")
    assert both == int((NUM_TRAIN + NUM_TEST) * per_example)


def test_a_share_within_the_budget_is_cached(tfds_dir, caplog):
    with caplog.at_level(logging.INFO):
        assert isinstance(shard(tfds_dir, cache_max_gb=1.0), MemoryShard)
    assert "caching effnet_test_tiny" in caplog.text and "budget 1.00 GB" in caplog.text


def test_a_share_over_the_budget_is_streamed_with_the_estimate_in_the_log(tfds_dir, caplog):
    # The metadata says this dataset (a few KB) is larger than a 1 KB budget: nothing is
    # loaded, the records are streamed, and the log says why and what to do.
    with caplog.at_level(logging.WARNING):
        streamed = shard(tfds_dir, cache_max_gb=1e-6)
    assert isinstance(streamed, tfds_source.StreamShard)
    assert "not caching effnet_test_tiny" in caplog.text
    assert "data.cache_max_gb" in caplog.text and "array_record" in caplog.text


def test_each_process_checks_its_own_share(tfds_dir):
    builder = tfds_source.load_builder(config(tfds_dir))
    whole = tfds_source.encoded_bytes(builder, "train")
    budget_gb = 0.6 * whole / 1e9  # the whole split does not fit, half of it does
    assert isinstance(shard(tfds_dir, cache_max_gb=budget_gb), tfds_source.StreamShard)
    assert isinstance(shard(tfds_dir, 1, 2, cache_max_gb=budget_gb), MemoryShard)


def test_streamed_instead_of_cached_reads_the_same_examples(tfds_dir):
    def eval_ids(**overrides):
        clear_caches()
        batches = make_eval_iterator(config(tfds_dir, **overrides), Preprocessing(
            train_crop="resize"), image_size=8, global_batch_size=4)
        return sorted(np.concatenate([example_ids(b["image"][b["mask"]]) for b in batches]))

    assert eval_ids(cache_max_gb=1e-6) == eval_ids(cache_max_gb=1.0) == list(
        range(NUM_TRAIN, NUM_TRAIN + NUM_TEST))


def test_default_budget_is_a_quarter_of_host_memory():
    import os  # noqa: PLC0415
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert tfds_source.cache_budget_bytes(0) == physical // 4
    assert tfds_source.cache_budget_bytes(2.5) == 2_500_000_000


def test_negative_budget_is_refused(tfds_dir):
    with pytest.raises(ValueError, match="cache_max_gb must be >= 0"):
        config(tfds_dir, cache_max_gb=-1)
