"""The search's record: one JSON line per finished candidate, in `<workdir>/candidates.jsonl`.

The log is the search's only state. A restarted search reads it, replays it into the strategy
and continues with the next index, so no finished candidate is trained twice. The file is
rewritten whole (to a temporary name, then renamed) after each candidate, so a search killed
at any moment leaves either the old or the new log, never half a line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

LOG_NAME = "candidates.jsonl"
STATUSES = ("ok", "failed")


@dataclasses.dataclass(frozen=True)
class Record:
    """One evaluated candidate.

    Attributes:
      index: position in the search (0, 1, ...); `id` is its name ("c0007") and directory.
      status: "ok", or "failed" (the error is in `error`; it is never retried).
      block_strings: the architecture, one block string per stage.
      accuracy: held-out top-1 in [0, 1] after proxy training (see `proxy.ProxyResult`).
      step_seconds: median train-step time in seconds on the search's hardware.
      params: trainable parameters.
      flops: multiply-adds per image at the proxy image size.
      reward: A * S^w * P^v.
      parent: index of the candidate this one mutates (evolution), None if sampled.
      seconds: wall time of its proxy training, compilation included (0 when reused).
      reused: index of an earlier record of the same architecture whose figures it repeats
        (the space was nearly exhausted), None if it was trained.
      error: for failed candidates, the error type and message.
    """

    index: int
    id: str
    status: str
    block_strings: tuple[str, ...]
    accuracy: float | None = None
    step_seconds: float | None = None
    params: int | None = None
    flops: int | None = None
    reward: float | None = None
    parent: int | None = None
    seconds: float = 0.0
    reused: int | None = None
    error: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"record {self.id}: status {self.status!r} is not one of "
                             f"{', '.join(STATUSES)}")
        object.__setattr__(self, "block_strings", tuple(self.block_strings))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def candidate_id(index: int) -> str:
    return f"c{index:04d}"


def parse(text: str, source: str = LOG_NAME) -> list[Record]:
    """Records from JSON-lines text; fails naming the line if it is not this log's format."""
    records = []
    fields = {f.name for f in dataclasses.fields(Record)}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            unknown = set(raw) - fields
            if unknown:
                raise ValueError(f"unknown field(s) {sorted(unknown)}")
            records.append(Record(**raw))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{source} line {number} is not a candidate record ({error}): "
                             f"{line[:200]!r}. Restore the file or start a new workdir.") from None
    for position, record in enumerate(records):
        if record.index != position:
            raise ValueError(f"{source}: record {position} has index {record.index}; the log "
                             f"must list candidates 0, 1, 2, ... in order")
    return records


def _broadcast_text(text: str) -> str:
    """Process 0's text on every process (hosts need not share a filesystem)."""
    if jax.process_count() == 1:
        return text
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int64(data.size)))
    if size == 0:
        return ""
    if jax.process_index() != 0:
        data = np.zeros(size, np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(data))).decode()


def read(workdir: str) -> list[Record]:
    """The records of the search in `workdir` (empty for a new search), the same on every
    process."""
    path = epath.Path(workdir) / LOG_NAME
    text = path.read_text() if jax.process_index() == 0 and path.exists() else ""
    return parse(_broadcast_text(text), str(path))


def write(workdir: str, records: Sequence[Record]) -> None:
    """Replaces the log with `records` (process 0 only; a no-op elsewhere)."""
    if jax.process_index() != 0:
        return
    path = epath.Path(workdir) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / (LOG_NAME + ".tmp")
    temporary.write_text("".join(r.to_json() + "\n" for r in records))
    temporary.replace(path)
