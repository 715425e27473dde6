"""One path layer: every path a user passes (workdirs, checkpoints, weight files, exports, data
and image folders) goes through `etils.epath`, the layer Orbax already writes through, so gs://
works for inference, export and conversion as it does for training.

epath reads gs:// through TensorFlow's file layer when TensorFlow is installed, and through
fsspec/gcsfs (the `gcs` extra) otherwise or with `EPATH_USE_TF=false`; the project's own files
never go through `tf.io.gfile` directly. Readers that can only open local files (TF1 checkpoints,
Keras .h5, torch .pth, tar archives) get a local copy (`local_copy`).

Imports nothing of the package, so models, data and training code may all use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    """Whether `path` is a URI such as gs://bucket/x (not a local file)."""
    return "://" in os.fspath(path)


def tensorflow_reads(path: PathLike) -> bool:
    """Whether TensorFlow's readers (`tf.data.TFRecordDataset`, `tf.io.read_file`) may open
    `path`: a local path, or a URI when epath itself goes through TensorFlow for it
    (TensorFlow installed and `EPATH_USE_TF` not false, epath's default). With
    `EPATH_USE_TF=false` (gcsfs; a GCS emulator, which TensorFlow's client cannot reach) a URI
    is read through epath instead, in Python."""
    if not is_remote(path):
        return True
    if os.environ.get("EPATH_USE_TF", "").lower() in ("false", "no", "f", "0"):
        return False
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec("tensorflow") is not None


def resolve(path: PathLike) -> epath.Path:
    """`path` as an `epath.Path`: a URI as it is; a local path with `~` expanded and made
    absolute (Orbax and tensorstore refuse relative paths).

    For a URI, the listings fsspec holds for it are dropped first (`forget_listings`), so a
    folder another process wrote to since (a training run's new checkpoint) is seen as it is.
    """
    path = os.fspath(path)
    if not path:
        raise ValueError("empty path: give a local folder or a gs://bucket/... URI")
    if is_remote(path):
        forget_listings(path)
        return epath.Path(path)
    return epath.Path(os.path.abspath(os.path.expanduser(path)))


def forget_listings(path: PathLike) -> None:
    """Drops the folder listings that fsspec's file systems (gcsfs, epath's backend without
    TensorFlow) have cached for remote `path`, its parents and everything under it; they never
    expire by default."""
    path = os.fspath(path)
    try:
        import fsspec  # noqa: PLC0415

        cls = fsspec.get_filesystem_class(path.split("://", 1)[0])
    except (ImportError, ValueError):     # no fsspec backend for it: nothing cached
        return
    for filesystem in list(getattr(cls, "_cache", {}).values()):
        filesystem.invalidate_cache(path)           # the path and its parents
        below = filesystem._strip_protocol(path).rstrip("/") + "/"
        for key in [k for k in filesystem.dircache if k.startswith(below)]:
            filesystem.dircache.pop(key, None)


def sha256_files(files: list[PathLike]) -> str:
    """SHA-256 of the files' bytes (local or remote), concatenated in the given order (one
    file: its checksum)."""
    digest = hashlib.sha256()
    for path in files:
        with resolve(path).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def copy_tree(source: PathLike, destination: PathLike) -> None:
    """Copies file or folder `source` to `destination` (either may be remote); an existing
    `destination` is not removed first."""
    source, destination = epath.Path(source), epath.Path(destination)
    if not source.is_dir():
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(source.read_bytes())
        return
    destination.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():
        copy_tree(child, destination / child.name)


def remove_tree(path: PathLike) -> None:
    """Deletes file or folder `path` (local or remote) if it exists."""
    path = epath.Path(path)
    if path.is_dir():
        path.rmtree()
    elif path.exists():
        path.unlink()


@contextlib.contextmanager
def local_copy(path: PathLike, *, siblings: bool = False) -> Iterator[str]:
    """A local path holding `path`'s content, for readers that open local files only.

    A local `path` is yielded as it is (absolute); a remote one is copied into a temporary
    folder (`local_file`), deleted afterwards. `siblings=True` copies the files next to a
    remote file too (a TF1 checkpoint prefix's `.index` and `.data-*` files).
    """
    local, scratch = local_file(path, siblings=siblings)
    try:
        yield local
    finally:
        if scratch is not None:
            scratch.cleanup()


def local_file(path: PathLike, *, siblings: bool = False
               ) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """`local_copy` for a whole function: (a local path of `path`'s content, the temporary
    folder holding it or None). Keep the second value referenced while the file is read: the
    copy is deleted when it is dropped (a local `path` is returned as it is, with None).

    `siblings=True` also copies a remote file's neighbours that share its name as a prefix (a
    TF1 checkpoint `model.ckpt` -> `.index`, `.data-*`; `model.ckpt.index` -> its prefix's)."""
    path = resolve(path)
    if not is_remote(path):
        return os.fspath(path), None
    suffix = ".index" if siblings and path.name.endswith(".index") else ""
    prefix = path.parent / path.name[: len(path.name) - len(suffix)]
    scratch = tempfile.TemporaryDirectory(prefix="effnetv2_jax.")
    found = [p for p in prefix.parent.iterdir() if p.name == prefix.name
             or (siblings and p.name.startswith(prefix.name + "."))]
    if not found:
        raise FileNotFoundError(f"nothing at {path}")
    for p in found:
        copy_tree(p, os.path.join(scratch.name, p.name))
    return os.path.join(scratch.name, prefix.name) + suffix, scratch


@contextlib.contextmanager
def staged_output(path: PathLike) -> Iterator[str]:
    """A local path to write an output to, published at `path` when the block succeeds.

    For a local `path` that is `path` itself; for a remote one a temporary local path whose
    file or folder is copied to `path` afterwards (nothing is copied if the block fails).
    """
    path = resolve(path)
    if not is_remote(path):
        yield os.fspath(path)
        return
    scratch = tempfile.mkdtemp(prefix="effnetv2_jax.")
    try:
        local = os.path.join(scratch, path.name)
        yield local
        if os.path.exists(local):
            copy_tree(local, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
