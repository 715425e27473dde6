"""The training and evaluation iterators the training loop calls.

    info = dataset_info(config)
    train = make_train_iterator(config, preprocess, image_size=171, randaug_magnitude=5.0,
                                mixup_alpha=0.0, cutmix_alpha=0.0, global_batch_size=4096,
                                start_step=0, seed=0, process_index=jax.process_index(),
                                process_count=jax.process_count())
    batch = next(train)   # {"image": float32 [4096 / processes, 171, 171, 3],
                          #  "label": float32 [4096 / processes, num_classes]}
    train.close()         # at the stage boundary; then build the next stage's iterator

The training stream is a pure function of (seed, global step) for a given process count.
Each process splits its part of the data (`shard.py`) into epochs:

* epoch e visits the part in a stateless permutation keyed by (seed, e);
* process-local position q = step * local_batch + i is example `permutation_e[q mod n]` with
  e = q // n, so the iterator for `start_step` s starts at position s * local_batch directly
  (with progressive stages at their own batches: the examples seen before s over the process
  count, `start_example`), without replaying anything (streamed TFRecord data re-reads,
  without decoding, up to it);
* an example's crop, flip and augmentation are keyed by (seed, epoch, example key), a batch's
  mixup/CutMix by (seed, step, process index) (`seeds.py`).

So an iterator built at step s yields exactly the batches an uninterrupted run saw from step s,
and a progressive-learning stage change (new size, magnitude, alphas) continues the same
example order. Preprocessing runs in TF ops in parallel `tf.data` maps (deterministic order),
with no Python per example. With mixup or CutMix on, each example is prepared together with
the partner it is mixed with, and a batch's rows come pair by pair (`mixing.pair_rows`) rather
than in stream order; which examples form a batch does not change.

Evaluation visits every example of the eval split exactly once over all processes: each
process's last batch is padded with zero images (`mask` False, label 0), and every process
yields the same number of batches, `ceil(largest part / local batch)`, so collective ops in the
eval step line up.
"""

from __future__ import annotations

import numpy as np

from effnetv2_jax._extras import require
from effnetv2_jax.data import labels, mixing, preprocess as prep, seeds
from effnetv2_jax.data.config import DataConfig
from effnetv2_jax.data.shard import Shard
from effnetv2_jax.data.sources import DatasetInfo, dataset_info, open_shard
from effnetv2_jax.preprocessing import Preprocessing

tf = require("tensorflow", "data")

__all__ = ["Batches", "DatasetInfo", "dataset_info", "make_eval_iterator", "make_train_iterator"]

_FOREVER = np.iinfo(np.int64).max


class Batches:
    """An iterator of dicts of numpy arrays; `close()` releases its threads and buffers.

    Attributes:
      local_batch_size: examples per batch on this process.
      num_batches: batches in total (evaluation), None for the endless training stream.
    """

    def __init__(self, dataset: tf.data.Dataset, local_batch_size: int,
                 num_batches: int | None = None):
        self._iterator = dataset.as_numpy_iterator()
        self.local_batch_size = local_batch_size
        self.num_batches = num_batches

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            raise StopIteration
        return next(self._iterator)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("the training stream is endless; it has no len()")
        return self.num_batches

    def close(self) -> None:
        """Stops the pipeline: its prefetch threads and buffers are freed. Idempotent."""
        self._iterator = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count = "
                         f"{process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                         f"process_count {process_count} (each process yields an equal share)")
    return global_batch_size // process_count


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options


def _parallel(config: DataConfig) -> int:
    return tf.data.AUTOTUNE if config.num_parallel_calls == -1 else config.num_parallel_calls


def epoch_positions(num_examples: int, seed: int, start: int) -> tf.data.Dataset:
    """Local indices in epoch order from position `start`: dicts with "index" and "epoch".

    Epoch e is a stateless permutation of `range(num_examples)` keyed by (seed, e); position q
    is in epoch q // num_examples.
    """
    first_epoch, first_offset = divmod(start, num_examples)

    def epoch_indices(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int64), seeds.key(seed, seeds.ORDER, epoch))
        begin = tf.where(epoch == first_epoch, tf.constant(first_offset, tf.int64), 0)
        return tf.data.Dataset.from_tensor_slices(
            {"index": order[begin:], "epoch": tf.fill([num_examples - begin], epoch)})

    return tf.data.Dataset.range(first_epoch, _FOREVER).flat_map(epoch_indices)


def _example_stream(shard: Shard, seed: int, start: int) -> tf.data.Dataset:
    """Dicts with "raw", "label", "key", "epoch" from process-local position `start`."""
    if not shard.random_access:
        return shard.stream(seed, start)
    return shard.read(epoch_positions(shard.num_examples, seed, start))


def make_train_iterator(config: DataConfig, preprocess: Preprocessing, *, image_size: int,
                        randaug_magnitude: float, mixup_alpha: float, cutmix_alpha: float,
                        global_batch_size: int, start_step: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        start_example: int | None = None) -> Batches:
    """The training stream of one progressive-learning stage, from global step `start_step`.

    Args:
      image_size: train resolution in pixels.
      randaug_magnitude: RandAugment M of this stage (used when config.augment == "randaug").
      mixup_alpha, cutmix_alpha: Beta parameters of this stage; 0 disables each.
      global_batch_size: examples per step over all processes (divisible by process_count).
      start_step: the global step of the first batch.
      seed: the run's seed; the stream is a pure function of (seed, step).
      start_example: examples of the stream (all processes) before `start_step`; None:
        start_step * global_batch_size. Progressive stages with their own batches pass the
        sum over earlier stages, so the stream goes on where the last stage left it.

    Returns:
      Batches yielding {"image": float32 [local_batch, image_size, image_size, 3] normalised,
      "label": float32 [local_batch, num_classes] soft targets (no label smoothing): one-hot,
      or for multi-label data multi-hot, divided by the label count if
      `config.normalize_multi_hot`; then mixed}.
    """
    local_batch = _local_batch_size(global_batch_size, process_index, process_count)
    if start_step < 0 or image_size < 1 or randaug_magnitude < 0:
        raise ValueError(f"need start_step >= 0, image_size >= 1, randaug_magnitude >= 0 "
                         f"(got {start_step}, {image_size}, {randaug_magnitude})")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0 "
                         f"(got {mixup_alpha}, {cutmix_alpha})")
    if mixup_alpha > 0 and cutmix_alpha > 0 and local_batch < 2:
        raise ValueError("mixup and CutMix together split each process batch in two halves: "
                         f"need a local batch of at least 2, got {local_batch}")
    shard = open_shard(config, True, process_index, process_count)
    if shard.num_examples == 0:
        raise ValueError(f"process {process_index} of {process_count} has no training examples")
    num_classes = shard.num_classes

    def prepare(example):
        example_seed = seeds.key(seed, seeds.EXAMPLE, example["epoch"], example["key"])
        return prep.train_image(
            shard.decode(example["raw"]), example_seed, size=image_size, preprocess=preprocess,
            augment=config.augment, randaug_layers=config.randaug_layers,
            randaug_magnitude=randaug_magnitude, random_flip=config.random_flip,
            min_crop_area=config.min_crop_area or None)

    if start_example is None:
        start_example = start_step * global_batch_size
    if start_example % process_count:
        raise ValueError(f"start_example={start_example} does not divide over "
                         f"{process_count} processes")
    examples = _example_stream(shard, seed, start_example // process_count)
    if mixup_alpha > 0 or cutmix_alpha > 0:
        batches = _mixed_batches(
            examples, prepare, lambda label: labels.targets(
                label, num_classes, config.normalize_multi_hot), local_batch, image_size,
            mixup_alpha, cutmix_alpha, seed, start_step, process_index, _parallel(config))
    else:
        batches = examples.map(
            lambda example: {"image": prepare(example), "label": labels.targets(
                example["label"], num_classes, config.normalize_multi_hot)},
            num_parallel_calls=_parallel(config), deterministic=True)
        batches = batches.batch(local_batch, drop_remainder=True)
    return Batches(batches.prefetch(config.prefetch).with_options(_options()), local_batch)


def _mixed_batches(examples, prepare, to_target, local_batch, image_size, mixup_alpha,
                   cutmix_alpha, seed, start_step, process_index, parallel) -> tf.data.Dataset:
    """Batches mixed as `mixing.py` describes, one (example, partner) pair per parallel call.

    Each step's examples are grouped into the pairs that mixing puts together; a pair is
    decoded, augmented and mixed in one call, and the batch is emitted pair by pair
    (`mixing.pair_rows`).
    """
    both = mixup_alpha > 0 and cutmix_alpha > 0
    layout = mixing.pairs(local_batch, both)
    members = [tf.constant([a for a, _ in layout]), tf.constant([c for _, c in layout])]
    alone = tf.constant([a == c for a, c in layout])  # odd run: mixed with itself

    def arrange(step, batch):
        plan = mixing.make_plan(local_batch, image_size, image_size, mixup_alpha, cutmix_alpha,
                                seeds.key(seed, seeds.MIX, step, process_index))
        rows = {**batch, **vars(plan)}
        pairs = {name: tf.stack([tf.gather(value, index) for index in members], axis=1)
                 for name, value in rows.items()}
        return {**pairs, "alone": alone}

    def prepare_pair(pair):
        members = [{name: value[i] for name, value in pair.items() if name != "alone"}
                   for i in (0, 1)]
        first_image = prepare(members[0])
        images = [first_image, tf.cond(pair["alone"], lambda: first_image,
                                       lambda: prepare(members[1]))]
        targets = [to_target(member["label"]) for member in members]
        mixed_images, mixed_labels = [], []
        for own, other in ((0, 1), (1, 0)):
            row = members[own]
            mixed_images.append(mixing.mix_image(images[own], images[other], row["mixup_weight"],
                                                 row["box"], row["is_cutmix"]))
            mixed_labels.append(mixing.mix_labels(targets[own], targets[other],
                                                  row["label_weight"],
                                                  row["partner_label_weight"]))
        return {"image": tf.stack(mixed_images), "label": tf.stack(mixed_labels),
                "keep": tf.stack([True, tf.logical_not(pair["alone"])])}

    steps = tf.data.Dataset.range(start_step, _FOREVER)
    grouped = tf.data.Dataset.zip(steps, examples.batch(local_batch, drop_remainder=True))
    mixed = grouped.map(arrange).unbatch().map(prepare_pair, num_parallel_calls=parallel,
                                               deterministic=True)
    rows = mixed.unbatch().filter(lambda row: row["keep"])
    rows = rows.map(lambda row: {"image": row["image"], "label": row["label"]})
    return rows.batch(local_batch, drop_remainder=True)


def make_eval_iterator(config: DataConfig, preprocess: Preprocessing, *, image_size: int,
                       global_batch_size: int, process_index: int = 0,
                       process_count: int = 1) -> Batches:
    """Every evaluation example exactly once over all processes, padded to whole batches.

    Returns:
      Batches (with `len()`) yielding {"image": float32 [local_batch, image_size, image_size, 3],
      "label": int32 [local_batch] (float32 [local_batch, num_classes] multi-hot targets for
      multi-label data), "mask": bool [local_batch]} (mask False on padding); the
      same number of batches on every process.
    """
    local_batch = _local_batch_size(global_batch_size, process_index, process_count)
    shard = open_shard(config, False, process_index, process_count)
    num_batches = -(-shard.max_num_examples // local_batch)
    padding = num_batches * local_batch - shard.num_examples
    blank_label = (tf.zeros([shard.num_classes], tf.float32) if shard.multi_label
                   else tf.constant(0, tf.int32))
    blank = {"image": tf.zeros([image_size, image_size, 3], tf.float32), "label": blank_label,
             "mask": tf.constant(False)}
    examples = tf.data.Dataset.from_tensors(blank).repeat(padding)
    if shard.num_examples:
        def prepare(example):
            image = prep.eval_image(shard.decode(example["raw"]), image_size, preprocess)
            label = example["label"]
            if shard.multi_label:
                label = labels.targets(label, shard.num_classes, config.normalize_multi_hot)
            return {"image": image, "label": label, "mask": tf.constant(True)}

        real = shard.in_order().map(prepare, num_parallel_calls=_parallel(config),
                                    deterministic=True)
        examples = real.concatenate(examples)
    batches = examples.batch(local_batch, drop_remainder=True).prefetch(config.prefetch)
    return Batches(batches.with_options(_options()), local_batch, num_batches)
