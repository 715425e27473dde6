"""TensorBoard event files written through the path layer (`effnetv2_jax.paths`), so a workdir
on gs:// gets its summaries through etils.epath like its checkpoints.

CLU's `SummaryWriter` writes through TensorFlow's file layer, whose gs:// client cannot be
pointed anywhere but Google's endpoint (an emulator, a proxy); this writer builds the same
events with tensorboard's protos and record framing and writes the bytes with epath. Scalars are
scalar tensors with the "scalars" plugin's metadata, as `tf.summary.scalar` writes them, so
TensorBoard and `benchmarks/plot_quickstart.py` read them alike.

A local file is appended to at every write. An object store cannot append, so a remote file is
uploaded whole (as TensorFlow's GCS writer does at each flush) at most every
`upload_every_seconds` and at `flush`/`close`; events after the last upload are lost if the
process is killed.
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu.metric_writers import interface
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from effnetv2_jax import paths


def _metadata(plugin: str) -> summary_pb2.SummaryMetadata:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))


def _png(image: np.ndarray) -> bytes:
    """float [h, w, c] in 0-1 (or uint8) -> PNG bytes."""
    from PIL import Image  # noqa: PLC0415

    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    encoded = io.BytesIO()
    Image.fromarray(array).save(encoded, format="PNG")
    return encoded.getvalue()


class EventFileWriter(interface.MetricWriter):
    """CLU's `MetricWriter` interface onto one TensorBoard event file in `logdir` (local or
    remote): scalars, images and texts."""

    def __init__(self, logdir: str | os.PathLike, upload_every_seconds: float = 60.0):
        directory = paths.resolve(logdir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / (f"events.out.tfevents.{time.time():.6f}."
                                 f"{socket.gethostname()}.{os.getpid()}.v2")
        self._remote = paths.is_remote(self.path)
        self._upload_every = upload_every_seconds
        self._written = bytearray()       # every record (remote) / records not yet appended
        self._uploaded_at = time.monotonic()
        self._closed = False
        self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def _write_event(self, event: event_pb2.Event) -> None:
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        framed = io.BytesIO()
        RecordWriter(framed).write(event.SerializeToString())
        self._written += framed.getvalue()
        if not self._remote:
            self.flush()
        elif time.monotonic() - self._uploaded_at > self._upload_every:
            self.flush()

    def _write_values(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        self._write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                          summary=summary_pb2.Summary(value=values)))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self._write_values(step, [summary_pb2.Summary.Value(
            tag=tag, metadata=_metadata("scalars"),
            tensor=tensor_util.make_tensor_proto(np.asarray(value, np.float32)))
            for tag, value in scalars.items()])

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """images: {tag: [batch, height, width, channels] floats in 0-1 or uint8}."""
        values = []
        for tag, batch in images.items():
            batch = np.asarray(batch)
            batch = batch[None] if batch.ndim == 3 else batch
            height, width = batch.shape[1:3]
            # The image plugin's tensor: [width, height, png, png, ...] as strings.
            content = [str(width).encode(), str(height).encode(), *(_png(x) for x in batch)]
            values.append(summary_pb2.Summary.Value(
                tag=tag, metadata=_metadata("images"),
                tensor=tensor_util.make_tensor_proto(np.array(content, dtype=object))))
        self._write_values(step, values)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self._write_values(step, [summary_pb2.Summary.Value(
            tag=tag, metadata=_metadata("text"),
            tensor=tensor_util.make_tensor_proto(np.array(text.encode(), dtype=object)))
            for tag, text in texts.items()])

    def _unsupported(self, kind: str):
        raise NotImplementedError(f"{type(self).__name__} writes scalars, images and texts, "
                                  f"not {kind}")

    def write_summaries(self, step, values, metadata=None):
        self._unsupported("raw summaries")

    def write_videos(self, step, videos):
        self._unsupported("videos")

    def write_audios(self, step, audios, *, sample_rate):
        self._unsupported("audio")

    def write_histograms(self, step, arrays, num_buckets=None):
        self._unsupported("histograms")

    def write_hparams(self, hparams):
        self._unsupported("hyperparameters")

    def flush(self) -> None:
        if self._remote:
            self.path.write_bytes(bytes(self._written))
            self._uploaded_at = time.monotonic()
        elif self._written:
            with self.path.open("ab") as f:
                f.write(bytes(self._written))
            self._written.clear()

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True
