"""TFDS datasets: find a prepared dataset without the network, and read this process's part.

`load_builder` never starts a download unless `DataConfig.download` is set: a dataset that is
not prepared in `data_dir` fails within seconds, naming the directory searched and the command
that prepares it (TFDS would otherwise retry the network for minutes).

How a part is read depends on how the dataset was prepared and on `DataConfig.cache`:

| prepared as | cache | reading                                   | resume at s  | memory    |
|-------------|-------|-------------------------------------------|--------------|-----------|
| ArrayRecord | any   | by index from disk: one Python call per   | instant      | none      |
|             |       | 64 records (C++ reads), TF decoding       |              |           |
| TFRecord    | True  | encoded records loaded once, by index     | instant      | encoded / |
|             |       | (if the share fits `cache_max_gb`, else   |              | processes |
|             |       | streamed as below)                        |              |           |
| TFRecord    | False | streamed: files shuffled per epoch, 16    | re-reads the | one       |
|             |       | interleaved, shuffled in windows of       | epoch up to  | window    |
|             |       | `shuffle_buffer` records                  | s, undecoded |           |

A `data_dir` on gs:// (or another URI): TFDS reads the metadata through etils.epath, and the
TFRecord files go through the file layer epath uses (`paths.tensorflow_reads`): TensorFlow's
C++ reader by default, or, with `EPATH_USE_TF=false` (gcsfs, as the tests' GCS emulator needs,
since TensorFlow's client reaches only Google's endpoint), epath in Python (`tfrecords`).
ArrayRecord's reader opens gs:// itself (google-cloud-cpp; an emulator through
`CLOUD_STORAGE_EMULATOR_ENDPOINT`).

TFRecord is TFDS's default; for ImageNet-size data prefer `tfds build NAME
--file_format=array_record`, which gives full-epoch shuffles and instant resume from disk. The
ArrayRecord reader crosses into Python once per 64 records, never per example.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

import numpy as np
from absl import logging

from effnetv2_jax import paths
from effnetv2_jax._extras import require
from effnetv2_jax.data import seeds
from effnetv2_jax.data.config import DataConfig
from effnetv2_jax.data.labels import LabelFeature, RaggedLabels, describe_feature, multi_hot
from effnetv2_jax.data.preprocess import decode as decode_image
from effnetv2_jax.data.shard import MemoryShard, Shard

tf = require("tensorflow", "data")
tfds = require("tensorflow_datasets", "data")
masked_crc32c = require("tensorboard.compat.tensorflow_stub.pywrap_tensorflow", "data").masked_crc32c

_MEMORY_CACHE: dict[tuple, MemoryShard] = {}
_MEMORY_CACHE_SIZE = 4  # train + eval of this stage and the previous one
# Where the metadata has no size: an ImageNet JPEG's average, about 110 KB.
_ASSUMED_BYTES_PER_EXAMPLE = 110_000


def _default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def not_prepared_message(builder: tfds.core.DatasetBuilder, name: str) -> str:
    root = os.fspath(builder.data_dir_root)
    message = (f"TFDS dataset '{name}' is not prepared in data_dir '{root}' (nothing at "
               f"{builder.data_dir}). Prepare it once on a machine with network access: "
               f"`tfds build {name} --data_dir={root}` (add `--file_format=array_record` for "
               f"large datasets), and copy the directory here; or set DataConfig(download=True) "
               f"to let TFDS download it now.")
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        message += (f" This dataset needs a manual download first, into "
                    f"{os.path.join(root, 'downloads', 'manual')}: "
                    f"{' '.join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}")
    return message


def load_builder(config: DataConfig) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder for `config.name` in `config.data_dir` (seconds, no network)."""
    data_dir = config.data_dir or _default_data_dir()
    try:
        builder = tfds.builder(config.name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"unknown TFDS dataset '{config.name}': not in the TFDS catalog and not "
                         f"prepared in data_dir '{data_dir}' (see tfds.list_builders())") from None
    if not builder.is_prepared():
        if not config.download:
            raise FileNotFoundError(not_prepared_message(builder, config.name))
        logging.info("Downloading and preparing %s into %s", config.name, data_dir)
        builder.download_and_prepare()
    return builder


def check_features(builder: tfds.core.DatasetBuilder, image_key: str,
                   label_key: str) -> LabelFeature:
    """The label feature's classes; fails with the feature names if the image feature or the
    label feature (a ClassLabel or a Sequence of ClassLabel) is missing or of a wrong type."""
    features = builder.info.features
    names = sorted(features.keys())
    if image_key not in names or not isinstance(features[image_key], tfds.features.Image):
        raise ValueError(f"dataset '{builder.name}' has no image feature '{image_key}' "
                         f"(features: {names}); set DataConfig.image_key")
    label = describe_feature(features[label_key]) if label_key in names else None
    if label is None:
        raise ValueError(f"dataset '{builder.name}' has no class-label feature '{label_key}' "
                         f"(a ClassLabel or Sequence(ClassLabel); features: {names}); set "
                         f"DataConfig.label_key")
    return label


def resolve_split(builder: tfds.core.DatasetBuilder, split: str | None) -> str:
    """`split`, or for None "validation" if present, else "test"; fails naming the splits."""
    available = list(builder.info.splits.keys())
    if split is None:
        for candidate in ("validation", "test"):
            if candidate in available:
                return candidate
        raise ValueError(f"dataset '{builder.name}' has no 'validation' or 'test' split "
                         f"(splits: {available}); set DataConfig.eval_split")
    try:
        builder.info.splits[split]
    except (KeyError, ValueError) as error:
        raise ValueError(f"split '{split}' is not valid for dataset '{builder.name}' "
                         f"(splits: {available}): {error}") from None
    return split


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    return builder.info.splits[split].num_examples


def open_shard(builder: tfds.core.DatasetBuilder, config: DataConfig, split: str,
               process_index: int, process_count: int) -> Shard:
    """This process's contiguous part of `split` (`tfds.even_splits`), read as the table says."""
    check_features(builder, config.image_key, config.label_key)
    parts = tfds.even_splits(split, n=process_count)
    sizes = [num_examples(builder, part) for part in parts]
    part, offset = parts[process_index], sum(sizes[:process_index])
    args = (builder, part, config.image_key, config.label_key, offset, max(sizes))
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
        return ArrayRecordShard(*args)
    if not config.cache or not _cache_fits(builder, part, config.cache_max_gb,
                                           config.shuffle_buffer):
        return StreamShard(*args, window=config.shuffle_buffer)
    cache_key = (os.fspath(builder.data_dir), str(part), config.image_key, config.label_key)
    if cache_key not in _MEMORY_CACHE:
        while len(_MEMORY_CACHE) >= _MEMORY_CACHE_SIZE:
            _MEMORY_CACHE.pop(next(iter(_MEMORY_CACHE)))
        _MEMORY_CACHE[cache_key] = _load_into_memory(*args)
    return _MEMORY_CACHE[cache_key]


def encoded_bytes(builder: tfds.core.DatasetBuilder, part: str) -> int:
    """Estimated bytes of the split expression `part` as stored, from the metadata alone: its
    examples times the dataset's recorded bytes per example (TFDS records sizes for whole
    splits only, not for expressions such as "train+test" or "train[:50%]")."""
    splits = builder.info.splits.values()
    recorded = sum(int(s.num_bytes) for s in splits)
    examples = sum(s.num_examples for s in splits)
    per_example = recorded / examples if recorded and examples else _ASSUMED_BYTES_PER_EXAMPLE
    return int(num_examples(builder, part) * per_example)


def cache_budget_bytes(cache_max_gb: float) -> int:
    """`cache_max_gb` in bytes; 0 = a quarter of this host's physical memory."""
    if cache_max_gb > 0:
        return int(cache_max_gb * 1e9)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def _cache_fits(builder, part: str, cache_max_gb: float, window: int) -> bool:
    """Whether this process's part may be held in memory; logs the estimate."""
    needed, budget = encoded_bytes(builder, part), cache_budget_bytes(cache_max_gb)
    if needed <= budget:
        logging.info("caching %s[%s] in memory: about %.2f GB of encoded records (budget "
                     "%.2f GB, data.cache_max_gb)", builder.name, part, needed / 1e9,
                     budget / 1e9)
        return True
    logging.warning(
        "not caching %s[%s]: its encoded records are about %.2f GB, over this process's "
        "budget of %.2f GB (data.cache_max_gb); streaming from disk with shuffle windows of %d "
        "records instead (a resume re-reads the epoch up to its step). Prepare the dataset with "
        "`tfds build --file_format=array_record` for full shuffles and instant resume from "
        "disk.", builder.name, part, needed / 1e9, budget / 1e9, window)
    return False


def clear_cache() -> None:
    """Frees the encoded records held for TFRecord datasets."""
    _MEMORY_CACHE.clear()


def _read_tfrecords(path) -> Iterator[bytes]:
    """The records of one TFRecord file, read through epath. Each record is framed as
    uint64 length, uint32 masked CRC-32C of the length, data, uint32 masked CRC-32C of the
    data; the length's CRC is checked (a damaged or truncated file fails naming it)."""
    path = path.decode() if isinstance(path, bytes) else path
    with paths.resolve(path).open("rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                raise OSError(f"{path}: truncated TFRecord header")
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack(
                "<I", header[8:])
            if masked_crc32c(header[:8]) != length_crc:
                raise OSError(f"{path}: corrupted TFRecord (bad length checksum)")
            data = f.read(length + 4)
            if len(data) < length + 4:
                raise OSError(f"{path}: truncated TFRecord (file ends inside a record)")
            yield data[:length]


def tfrecords(filename: tf.Tensor, through_epath: bool) -> tf.data.Dataset:
    """The records (tf.string) of TFRecord file `filename`: `tf.data.TFRecordDataset`, or with
    `through_epath` epath in Python (`_read_tfrecords`)."""
    if not through_epath:
        return tf.data.TFRecordDataset(filename)
    return tf.data.Dataset.from_generator(_read_tfrecords, args=(filename,),
                                          output_signature=tf.TensorSpec([], tf.string))


def _through_epath(builder) -> bool:
    return not paths.tensorflow_reads(os.fspath(builder.data_dir))


def _encoded_examples(builder, split, image_key, label_key) -> tf.data.Dataset:
    """(encoded image, label) of every example of `split`, in stored order."""
    decoders = {image_key: tfds.decode.SkipDecoding()}
    if not _through_epath(builder):
        return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders).map(
            lambda ex: (ex[image_key], ex[label_key]))
    instructions = builder.info.splits[split].file_instructions
    records = None
    for i in instructions:
        part = tfrecords(tf.constant(os.fspath(i.filename)), True).skip(i.skip).take(i.take)
        records = part if records is None else records.concatenate(part)
    features = builder.info.features

    def parse(record):
        example = features.deserialize_example(record, decoders=decoders)
        return example[image_key], example[label_key]

    return records.map(parse)


def _load_into_memory(builder, split, image_key, label_key, offset, max_num_examples):
    start = time.time()
    feature = describe_feature(builder.info.features[label_key])
    dataset = _encoded_examples(builder, split, image_key, label_key).ragged_batch(1024)
    encoded, labels = [], []
    for images, batch_labels in dataset.as_numpy_iterator():
        encoded.extend(images)
        if feature.multi_label:  # one class-id array per image (object or 2-D array)
            labels.extend(list(batch_labels))
        else:
            labels.append(batch_labels)
    if feature.multi_label:
        labels = RaggedLabels(labels, feature.num_classes)
    else:
        labels = np.concatenate(labels) if labels else np.zeros([0], np.int32)
    shard = MemoryShard(np.array(encoded, dtype=object), labels,
                        np.arange(offset, offset + len(labels)), feature.num_classes,
                        max_num_examples)
    logging.info("Loaded %d encoded examples of %s[%s] (%.1f MB) into memory in %.1f s",
                 len(labels), builder.name, split, shard.nbytes / 1e6, time.time() - start)
    return shard


class _RecordShard(Shard):
    """Shared parsing of serialized TFDS records (ArrayRecord and streamed TFRecord)."""

    def __init__(self, builder, split, image_key, label_key, offset, max_num_examples):
        feature = describe_feature(builder.info.features[label_key])
        self.num_classes, self.multi_label = feature.num_classes, feature.multi_label
        self.num_examples = num_examples(builder, split)
        self.max_num_examples = max_num_examples
        self._builder, self._split = builder, split
        self._image_key, self._label_key, self._offset = image_key, label_key, offset

    def _parse(self, record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        example = self._builder.info.features.deserialize_example(
            record, decoders={self._image_key: tfds.decode.SkipDecoding()})
        label = example[self._label_key]
        if self.multi_label:
            return example[self._image_key], multi_hot(label, self.num_classes)
        return example[self._image_key], tf.cast(label, tf.int32)

    def decode(self, raw):
        return decode_image(raw)


class ArrayRecordShard(_RecordShard):
    """Random access to a dataset prepared as ArrayRecord."""

    CHUNK = 64  # records per Python call

    def __init__(self, *args):
        super().__init__(*args)
        self._source = self._builder.as_data_source(
            self._split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)

    def _records(self, indices: np.ndarray) -> np.ndarray:
        return np.array(self._source.__getitems__(indices.tolist()), dtype=object)

    def read(self, elements):
        def fetch_chunk(chunk):
            records = tf.numpy_function(self._records, [chunk["index"]], tf.string)
            records.set_shape(chunk["index"].shape)
            return {**chunk, "record": records}

        def parse(element):
            raw, label = self._parse(element.pop("record"))
            return {**element, "raw": raw, "label": label, "key": self._offset + element["index"]}

        chunks = elements.batch(self.CHUNK).map(fetch_chunk)
        return chunks.unbatch().map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class StreamShard(_RecordShard):
    """A TFRecord dataset read as a stream (DataConfig.cache=False)."""

    random_access = False
    CYCLE_LENGTH = 16  # files read at once

    def __init__(self, *args, window: int):
        super().__init__(*args)
        instructions = self._builder.info.splits[self._split].file_instructions
        self._files = tf.constant([os.fspath(i.filename) for i in instructions])
        self._skips = tf.constant([i.skip for i in instructions], tf.int64)
        self._takes = tf.constant([i.take for i in instructions], tf.int64)
        self._window = window

    def _file_records(self, order: tf.Tensor, cycle_length: int) -> tf.data.Dataset:
        files = tf.data.Dataset.from_tensor_slices((tf.gather(self._files, order),
                                                    tf.gather(self._skips, order),
                                                    tf.gather(self._takes, order)))
        through_epath = _through_epath(self._builder)
        return files.interleave(lambda f, skip, take: tfrecords(f, through_epath).skip(skip)
                                .take(take), cycle_length=cycle_length, block_length=1)

    def stream(self, seed, start):
        first_epoch, first_offset = divmod(start, self.num_examples)
        num_files = int(self._files.shape[0])

        def epoch_records(epoch):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(num_files, dtype=tf.int64), seeds.key(seed, seeds.FILES, epoch))
            records = self._file_records(order, min(self.CYCLE_LENGTH, num_files))

            def shuffle_window(window_index, window):
                permutation = tf.random.experimental.stateless_shuffle(
                    tf.range(tf.shape(window, out_type=tf.int64)[0]),
                    seeds.key(seed, seeds.WINDOW, epoch, window_index))
                return tf.gather(window, permutation)

            shuffled = records.batch(self._window).enumerate().map(shuffle_window).unbatch()
            skip = tf.where(epoch == first_epoch, tf.constant(first_offset, tf.int64), 0)
            return shuffled.enumerate().skip(skip).map(
                lambda position, record: {"record": record, "position": position,
                                          "epoch": epoch})

        def parse(element):
            raw, label = self._parse(element["record"])
            return {"raw": raw, "label": label, "key": self._offset + element["position"],
                    "epoch": element["epoch"]}

        epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
        return epochs.flat_map(epoch_records).map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                                  deterministic=True)

    def in_order(self):
        records = self._file_records(tf.range(int(self._files.shape[0])), cycle_length=1)

        def parse(position, record):
            raw, label = self._parse(record)
            return {"raw": raw, "label": label, "key": self._offset + position}

        return records.enumerate().map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True)
