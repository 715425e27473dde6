"""Strict name and shape matching between a weight file and the Flax model.

A converter describes, for every leaf of the model (`blocks.3.expand_conv.kernel`), which tensor
of the file feeds it and how its layout changes (`SourceTensor`). `match` then loads every
tensor and refuses to produce anything unless the file holds exactly what the model needs:
a tensor the model needs but the file lacks (missing), one the file holds that nothing uses
(unexpected; optimizer slots and the like are declared ignorable by each converter), and one
whose shape differs after the layout change (wrong shape) all end in one `ConversionError`
that lists every offender by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import numpy as np

from effnetv2_jax.progress import progress

SOURCES = ("tf1", "timm", "keras")  # the weight formats, one converter module each
_SHOWN = 25  # offenders listed per category; the count of the rest follows


class ConversionError(ValueError):
    """The weight file does not fit the model. Attributes list the offending names.

    Attributes:
      missing: file names the model needs that the file lacks.
      unexpected: file names that nothing in the model uses.
      wrong_shape: (file name, file shape after the layout change, model shape, model leaf).
    """

    def __init__(self, message: str, *, missing=(), unexpected=(), wrong_shape=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.wrong_shape = list(wrong_shape)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


@dataclasses.dataclass(frozen=True)
class SourceTensor:
    """Where one model leaf comes from.

    Attributes:
      name: the tensor's name in the file.
      transform: source layout -> Flax layout (e.g. PyTorch OIHW -> HWIO).
      label: a readable name for messages when `name` is positional (Keras 3 files).
    """

    name: str
    transform: Callable[[np.ndarray], np.ndarray] = _identity
    label: str = ""

    def describe(self) -> str:
        return f"{self.name} ({self.label})" if self.label else self.name


class Reader(Protocol):
    """A weight file opened for reading: names, and arrays by name."""

    def names(self) -> Iterable[str]: ...

    def read(self, name: str) -> np.ndarray: ...


@dataclasses.dataclass
class OpenedSource:
    """A weight file opened by a converter, ready for `match`.

    Attributes:
      reader: the file's tensors.
      mapping: model leaf -> the tensor that feeds it (the classifier included).
      ignored: names the file may hold that are legitimately unused.
      files: the files read, for the checksum recorded in the metadata.
      notes: extra facts for the metadata (e.g. which weights were read: EMA or raw).
    """

    reader: Reader
    mapping: dict[str, SourceTensor]
    ignored: Callable[[str], bool]
    files: list[str]
    notes: dict = dataclasses.field(default_factory=dict)


def _listing(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    shown = [f"  {line}" for line in lines[:_SHOWN]]
    if len(lines) > _SHOWN:
        shown.append(f"  ... and {len(lines) - _SHOWN} more")
    return [f"{title}:"] + shown


def match(expected: Mapping[str, tuple[int, ...]], mapping: Mapping[str, SourceTensor],
          reader: Reader, *, what: str, ignored: Callable[[str], bool] = lambda name: False,
          dropped: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Loads the model's leaves from `reader`, strictly.

    Args:
      expected: model leaf -> shape, for every leaf to fill.
      mapping: model leaf -> `SourceTensor`; must cover `expected`.
      reader: the opened file.
      what: "<source> file <path> -> <model>", for the error message.
      ignored: file names that are legitimately unused (optimizer slots, step counters,
        non-EMA copies when the EMA is loaded...).
      dropped: file names deliberately not loaded (a replaced classifier).
    Returns:
      model leaf -> float32 array in the Flax layout.
    Raises:
      ConversionError: listing every missing, unexpected and wrongly shaped tensor.
    """
    uncovered = sorted(set(expected) - set(mapping))
    if uncovered:  # a converter bug, not a file problem
        raise AssertionError(f"converter has no source for model leaves {uncovered}")
    available = set(reader.names())
    used = {mapping[leaf].name for leaf in expected} | set(dropped)
    missing, wrong_shape, values = [], [], {}
    leaves = [leaf for leaf in mapping if leaf in expected]  # network order, for messages
    for leaf in progress(leaves, desc="convert", unit="tensor", leave=False):
        source, shape = mapping[leaf], expected[leaf]
        if source.name not in available:
            missing.append((source, leaf))
            continue
        raw = np.asarray(reader.read(source.name))
        try:
            array = np.asarray(source.transform(raw))
        except ValueError:  # a rank the layout change cannot take: report the file's shape
            wrong_shape.append((source.name, tuple(raw.shape), tuple(shape), leaf))
            continue
        if tuple(array.shape) != tuple(shape):
            wrong_shape.append((source.name, tuple(array.shape), tuple(shape), leaf))
            continue
        values[leaf] = array.astype(np.float32)
    unexpected = sorted(n for n in available - used if not ignored(n))
    if missing or unexpected or wrong_shape:
        lines = [f"cannot convert {what}: {len(missing)} missing, {len(unexpected)} unexpected "
                 f"and {len(wrong_shape)} wrongly shaped tensor(s)"]
        lines += _listing("missing (the model needs them, the file lacks them)",
                          [f"{s.describe()} -> {leaf}" for s, leaf in missing])
        lines += _listing("unexpected (in the file, used by nothing in the model)", unexpected)
        lines += _listing("wrong shape (file, after the layout change -> model)",
                          [f"{name}: {list(got)} -> {list(want)} ({leaf})"
                           for name, got, want, leaf in wrong_shape])
        raise ConversionError("\n".join(lines), missing=[s.name for s, _ in missing],
                              unexpected=unexpected, wrong_shape=wrong_shape)
    return values


# Layout changes shared by the converters.
def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    """PyTorch conv [out, in, kh, kw] -> [kh, kw, in, out]; a depthwise [C, 1, k, k] becomes
    [k, k, 1, C], which is the Flax depthwise layout."""
    return np.transpose(w, (2, 3, 1, 0))


def tf_depthwise_to_flax(w: np.ndarray) -> np.ndarray:
    """TF / Keras depthwise [k, k, C, 1] -> Flax [k, k, 1, C]."""
    return np.transpose(w, (0, 1, 3, 2))


def linear_to_dense(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear [out, in] -> [in, out]."""
    return np.transpose(w)
