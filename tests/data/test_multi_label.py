"""Multi-label data (ImageNet-21k style `Sequence(ClassLabel)`): targets, eval, loss, training."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from effnetv2_jax.data import DataConfig, Preprocessing, dataset_info, make_eval_iterator
from effnetv2_jax.data import make_train_iterator
from effnetv2_jax.inference import load_checkpoint
from effnetv2_jax.train import base_config, loop, validate
from effnetv2_jax.train.step import classification_loss

from flat_images import NUM_TEST, NUM_TRAIN, EffnetTestMultiLabel, example_ids, multi_labels

FLAT = Preprocessing(train_crop="resize")
NAME = "effnet_test_multi_label"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """data_dirs holding the multi-label dataset as TFRecord and as ArrayRecord."""
    dirs = {}
    for file_format in ("tfrecord", "array_record"):
        dirs[file_format] = str(tmp_path_factory.mktemp(f"multi_label_{file_format}"))
        EffnetTestMultiLabel(data_dir=dirs[file_format],
                             file_format=file_format).download_and_prepare()
    return dirs


@pytest.fixture(params=["tfrecord", "array_record"])
def multi_label_dir(request, prepared):
    return prepared[request.param]


def config_for(data_dir, **overrides):
    return DataConfig(source="tfds", name=NAME, data_dir=data_dir, label_key="labels",
                      augment="none", random_flip=False, **overrides)


def expected_targets(ids, normalize=True):
    hot = np.zeros([len(ids), 4], np.float32)
    for row, example_id in enumerate(ids):
        hot[row, sorted(set(multi_labels(example_id)))] = 1.0
    if normalize:
        hot /= np.maximum(hot.sum(1, keepdims=True), 1.0)
    return hot


def train_batches(config, steps, **overrides):
    args = dict(image_size=8, randaug_magnitude=0.0, mixup_alpha=0.0, cutmix_alpha=0.0,
                global_batch_size=6, start_step=0, seed=3)
    args.update(overrides)
    with make_train_iterator(config, FLAT, **args) as iterator:
        return [next(iterator) for _ in range(steps)]


def test_dataset_info_reports_multi_label(multi_label_dir):
    info = dataset_info(config_for(multi_label_dir))
    assert info.multi_label and info.num_classes == 4
    assert (info.num_train_examples, info.num_eval_examples) == (NUM_TRAIN, NUM_TEST)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_train_targets_are_the_examples_multi_hot(multi_label_dir, cache, normalize):
    config = config_for(multi_label_dir, cache=cache, shuffle_buffer=8,
                        normalize_multi_hot=normalize)
    batches = train_batches(config, 6)  # 36 examples: past one epoch
    for batch in batches:
        assert batch["label"].shape == (6, 4) and batch["label"].dtype == np.float32
        ids = example_ids(batch["image"])
        np.testing.assert_allclose(batch["label"], expected_targets(ids, normalize), atol=1e-7)
    seen = np.concatenate([example_ids(b["image"]) for b in batches[:5]])
    assert sorted(seen) == list(range(NUM_TRAIN))  # one epoch covers each example once


def test_mixup_mixes_multi_hot_targets(multi_label_dir):
    mixed = train_batches(config_for(multi_label_dir), 3, mixup_alpha=0.4)
    for batch in mixed:
        sums = batch["label"].sum(1)
        # each row is a convex mix of two normalised targets (or empty ones, which sum to 0)
        assert np.all((sums > -1e-6) & (sums < 1 + 1e-6))
        assert np.any(np.abs(batch["label"] - np.round(batch["label"] * 6) / 6) > 1e-3)


def test_eval_labels_are_multi_hot_and_padding_is_blank(multi_label_dir):
    config = config_for(multi_label_dir)
    batches = list(make_eval_iterator(config, FLAT, image_size=8, global_batch_size=4))
    assert len(batches) == 3
    ids = []
    for batch in batches:
        assert batch["label"].shape == (4, 4)
        assert np.all(batch["label"][~batch["mask"]] == 0)
        real = example_ids(batch["image"][batch["mask"]])
        np.testing.assert_allclose(batch["label"][batch["mask"]], expected_targets(real))
        ids.extend(real)
    assert sorted(ids) == list(range(NUM_TRAIN, NUM_TRAIN + NUM_TEST))


def test_a_label_that_is_not_a_class_label_is_refused(multi_label_dir):
    with pytest.raises(ValueError, match=r"no class-label feature 'id' \(a ClassLabel or "
                                         r"Sequence\(ClassLabel\)"):
        dataset_info(DataConfig(source="tfds", name=NAME, data_dir=multi_label_dir,
                                label_key="id"))


def test_losses_match_their_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5)).astype(np.float32)
    targets = expected_targets([0, 1, 2])  # 4 classes; pad to 5
    targets = np.pad(targets, [(0, 0), (0, 1)])
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    smoothed = targets * 0.9 + 0.1 / 5
    np.testing.assert_allclose(classification_loss(logits, targets, "softmax", 0.1),
                               -(smoothed * log_softmax).sum(1), rtol=1e-5)
    binary = (targets > 0).astype(np.float32) * 0.8 + 0.1  # TF: y (1 - a) + a / 2, a = 0.2
    probability = 1 / (1 + np.exp(-logits))
    per_class = -(binary * np.log(probability) + (1 - binary) * np.log(1 - probability))
    np.testing.assert_allclose(
        classification_loss(logits, (targets > 0).astype(np.float32), "sigmoid", 0.2),
        per_class.mean(1), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown loss_type 'hinge'"):
        classification_loss(logits, targets, "hinge")
    config = base_config()
    config.train.loss = "hinge"
    with pytest.raises(ValueError, match="config.train.loss='hinge'"):
        validate(config)


@pytest.mark.slow  # a training run, end to end
def test_training_on_multi_label_data_reports_label_hits(prepared, tmp_path):
    """End to end on 4 devices; eval top-1 / top-5 count a prediction among the image's labels,
    recomputed here from the saved EMA weights. (The sigmoid loss differs only in
    `classification_loss`, tested above.)"""
    multi_label_dir, loss = prepared["tfrecord"], "softmax"  # the paper's 21k loss
    sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
    import tiny  # noqa: PLC0415

    config = tiny.get_config()
    config.data.source, config.data.name = "tfds", NAME
    config.data.data_dir, config.data.label_key = multi_label_dir, "labels"
    config.data.augment, config.data.random_flip = "none", False
    config.data.normalize_multi_hot = loss == "softmax"
    config.train.loss = loss
    config.train.label_smoothing = 0.0
    config.train.num_steps = 4
    config.progressive.num_stages = 1
    config.model.num_classes = 4
    results = loop.train_and_evaluate(config, str(tmp_path))
    assert results["eval/examples"] == NUM_TEST
    assert np.isfinite(results["eval/ema_loss"]) and np.isfinite(results["eval/raw_loss"])

    loaded = load_checkpoint(str(tmp_path))
    eval_config = config_for(multi_label_dir, normalize_multi_hot=loss == "softmax")
    preprocess = loaded.preprocess
    hits1 = hits5 = 0
    for batch in make_eval_iterator(eval_config, preprocess, image_size=40, global_batch_size=8):
        logits = np.asarray(jax.jit(lambda x: loaded.model(x))(batch["image"]))
        top5 = np.argsort(-logits, axis=1, kind="stable")[:, :4]  # 4 classes
        hit = np.take_along_axis(batch["label"], top5, axis=1) > 0
        hits1 += int(hit[batch["mask"], 0].sum())
        hits5 += int(hit[batch["mask"]].any(1).sum())
    np.testing.assert_allclose(results["eval/ema_top1"], hits1 / NUM_TEST, atol=1e-6)
    np.testing.assert_allclose(results["eval/ema_top5"], hits5 / NUM_TEST, atol=1e-6)
