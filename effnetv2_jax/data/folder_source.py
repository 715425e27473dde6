"""Image folders: `root/<class name>/<image file>`, read by path inside `tf.data`; `root` may
be local or remote (gs://..., listed and read through etils.epath).

Class ids are the class-folder names in sorted order. Every non-hidden file in a class folder
is a candidate; JPEG, PNG (and GIF, BMP, WebP) decode to RGB, whatever their mode (grey,
palette, RGBA: alpha dropped, CMYK JPEG).

Unreadable files (corrupt, truncated, not an image) are found before training, not in the
middle of an epoch: the first time a process opens its part of a folder, it decodes each of its
files once, in parallel TF ops (about as long as one eval pass over that part), and drops the
ones that fail, with a warning naming each (`DataConfig.strict=True` stops at the first instead,
naming it). The result is kept for the life of the process, so later stages do not re-scan.
Dropping files before the stream is built keeps the stream a pure function of (seed, step):
a file skipped mid-stream would shift every later batch. A file that turns bad after the scan
still raises in the middle of training.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging
from etils import epath

from effnetv2_jax._extras import require
from effnetv2_jax.paths import tensorflow_reads
from effnetv2_jax.data.preprocess import decode as decode_image
from effnetv2_jax.data.shard import Shard, hold

tf = require("tensorflow", "data")

_SCANS: dict[tuple, np.ndarray] = {}
_MAX_NAMED_WARNINGS = 20


@dataclasses.dataclass(frozen=True)
class Listing:
    """The candidate files of a folder, sorted by class then file name."""

    root: str
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray  # int32, index into class_names


def clear_cache() -> None:
    """Forgets which files were found readable (they are re-scanned on next use)."""
    _SCANS.clear()


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_folder(root: str, class_names: tuple[str, ...] | None = None) -> Listing:
    """Lists `root/<class>/<file>`; with `class_names` (the training classes) maps onto them.

    Fails with the folder's path when it is missing, has no class folders, or no files.
    """
    directory = epath.Path(root)
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder '{root}' does not exist "
                                f"(expected images as {root}/<class>/<image>)")
    found = sorted(p.name for p in directory.iterdir() if _visible(p.name) and p.is_dir())
    if not found:
        raise FileNotFoundError(f"image folder '{root}' has no class folders "
                                f"(expected images as {root}/<class>/<image>)")
    if class_names is None:
        class_names = tuple(found)
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise ValueError(f"classes {unknown} of '{root}' are not training classes "
                         f"(training classes: {list(class_names)[:20]}...)")
    class_id = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for name in found:
        for path in sorted(directory.joinpath(name).iterdir(), key=lambda p: p.name):
            if _visible(path.name) and not path.is_dir():
                paths.append(os.fspath(path))
                labels.append(class_id[name])
    if not paths:
        raise FileNotFoundError(f"image folder '{root}' has class folders but no image files")
    return Listing(root, tuple(class_names), tuple(paths), np.asarray(labels, np.int32))


def _read_bytes(path) -> bytes:
    path = path.item() if isinstance(path, np.ndarray) else path    # a 0-d array of bytes
    return epath.Path(path.decode() if isinstance(path, bytes) else path).read_bytes()


def read_file(path: tf.Tensor, through_epath: bool) -> tf.Tensor:
    """A file's bytes inside `tf.data`: TensorFlow's reader, or with `through_epath` etils.epath
    in Python (a URI when epath does not use TensorFlow: `paths.tensorflow_reads`)."""
    if not through_epath:
        return tf.io.read_file(path)
    data = tf.numpy_function(_read_bytes, [path], tf.string, stateful=False)
    return tf.ensure_shape(data, [])


def _decodes(paths: list[str]) -> np.ndarray:
    """bool per path: whether TF decodes the file to a non-empty RGB image."""
    ok = np.zeros(len(paths), bool)
    if not paths:
        return ok
    through_epath = not tensorflow_reads(paths[0])

    def pixels(index, path):
        shape = tf.shape(decode_image(read_file(path, through_epath)))
        return index, shape[0] * shape[1]

    scan = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), list(paths)))
    scan = scan.map(pixels, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    scan = scan.ignore_errors().batch(1024)
    options = tf.data.Options()
    options.experimental_optimization.map_fusion = False  # keep the decode in the graph
    for indices, counts in scan.with_options(options).as_numpy_iterator():
        ok[indices] = counts > 0
    return ok


def _decode_error(path: str) -> str:
    try:
        decode_image(read_file(path, not tensorflow_reads(path)))
    except (tf.errors.OpError, ValueError, OSError) as error:
        return str(getattr(error, "message", error)).strip().splitlines()[0]
    return "decodes to an empty image"


def readable(listing: Listing, indices: np.ndarray, strict: bool) -> np.ndarray:
    """The subset of `indices` (into listing.paths) whose files decode.

    The first scan of these files warns once per unreadable file (naming it); with `strict`,
    raises naming the first one instead.
    """
    cache_key = (listing.root, listing.paths, tuple(indices))
    first_scan = cache_key not in _SCANS
    if first_scan:
        _SCANS[cache_key] = _decodes([listing.paths[i] for i in indices])
    ok = _SCANS[cache_key]
    bad = indices[~ok]
    if len(bad) and strict:
        path = listing.paths[bad[0]]
        raise ValueError(f"unreadable image file '{path}': {_decode_error(path)} "
                         f"(DataConfig.strict=True; {len(bad)} unreadable in this part)")
    if len(bad) and first_scan:
        for i in bad[:_MAX_NAMED_WARNINGS]:
            path = listing.paths[i]
            logging.warning("skipping unreadable image file '%s': %s", path, _decode_error(path))
        logging.warning("skipped %d unreadable of %d files in '%s'%s", len(bad), len(indices),
                        listing.root, f" (first {_MAX_NAMED_WARNINGS} named above)"
                        if len(bad) > _MAX_NAMED_WARNINGS else "")
    return indices[ok]


class FolderShard(Shard):
    """Every `process_count`-th readable file of a folder, starting at `process_index`."""

    def __init__(self, listing: Listing, process_index: int, process_count: int, strict: bool):
        candidates = np.arange(process_index, len(listing.paths), process_count)
        keys = readable(listing, candidates, strict)
        self.skipped_files = tuple(listing.paths[i] for i in np.setdiff1d(candidates, keys))
        self.num_classes = len(listing.class_names)
        self.num_examples = len(keys)
        # Eval batch counts must agree across processes without talking to each other, so
        # they come from the candidate counts, before unreadable files are dropped.
        self.max_num_examples = -(-len(listing.paths) // process_count)
        self._keys = tf.constant(keys.astype(np.int64))
        self._paths = hold(np.array(listing.paths, dtype=object)[keys]) if len(keys) else None
        self._labels = tf.constant(listing.labels[keys])
        self._through_epath = not tensorflow_reads(listing.root)

    def fetch(self, index):
        return (read_file(tf.gather(self._paths, index), self._through_epath),
                tf.gather(self._labels, index),
                tf.gather(self._keys, index))

    def decode(self, raw):
        return decode_image(raw)
