"""What a search leaves for its user: the ranking, a printable table and `best_config.py`.

`best_config.py` is a normal training config: the search's training recipe (everything but the
`nas` section, written as the keys that differ from `base_config()`) with the best candidate's
block strings, so `python -m effnetv2_jax.main --config=DIR/best_config.py --workdir=...`
trains the found network with the full recipe (all progressive stages, full budget).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
from etils import epath

from effnetv2_jax.nas.log import Record
from effnetv2_jax.train.config import base_config

BEST_CONFIG = "best_config.py"


def ranked(records: Sequence[Record]) -> list[Record]:
    """Successful, trained (not reused) records, best reward first (ties: the earlier one)."""
    return sorted((r for r in records if r.ok and r.reused is None),
                  key=lambda r: (-r.reward, r.index))


def describe(record: Record) -> str:
    """One line: id, reward, A, S, P, blocks (or the error)."""
    if not record.ok:
        return f"{record.id} failed ({record.error}) {' '.join(record.block_strings)}"
    reused = f" (same as {record.reused})" if record.reused is not None else ""
    return (f"{record.id} reward={record.reward:.4f} top1={record.accuracy:.4f} "
            f"step={record.step_seconds * 1e3:.1f}ms params={record.params} "
            f"train={record.seconds:.0f}s{reused} {' '.join(record.block_strings)}")


def format_table(records: Sequence[Record]) -> str:
    """A fixed-width table of `records` with a header line."""
    lines = [f"{'rank':>4}  {'id':5}  {'reward':>7}  {'top1':>6}  {'step_ms':>8}  "
             f"{'params':>9}  {'MMACs':>7}  blocks"]
    for rank, r in enumerate(records, 1):
        lines.append(f"{rank:>4}  {r.id:5}  {r.reward:7.4f}  {r.accuracy:6.4f}  "
                     f"{r.step_seconds * 1e3:8.2f}  {r.params:>9}  {r.flops / 1e6:7.2f}  "
                     f"{' '.join(r.block_strings)}")
    return "\n".join(lines)


def _assignments(config: ml_collections.ConfigDict, default: ml_collections.ConfigDict,
                 prefix: str = "config") -> list[str]:
    lines = []
    for key, value in config.items():
        if key not in default:
            raise ValueError(f"{prefix}.{key} is not a key of base_config(); best_config.py "
                             f"can only write the base config's keys")
        if isinstance(value, ml_collections.ConfigDict):
            lines += _assignments(value, default[key], f"{prefix}.{key}")
        elif key == "block_strings" or value != default[key] or type(value) is not type(
                default[key]):
            if isinstance(value, list):
                value = tuple(value)
            lines.append(f"    {prefix}.{key} = {value!r}")
    return lines


def write_best_config(path: str, train_config: ml_collections.ConfigDict, best: Record,
                      nas: ml_collections.ConfigDict, num_records: int, *,
                      proxy_size: int) -> None:
    """Writes the training config of `best` as a config file (see the module docstring)."""
    config = train_config.copy_and_resolve_references()
    config.model.block_strings = tuple(best.block_strings)
    blocks = "".join(f"\n    {s!r}," for s in best.block_strings)
    summary = (
        f"Candidate {best.id} of {num_records} ({nas.strategy}, seed {nas.seed}), proxy-trained "
        f"at {proxy_size} px:\nheld-out top-1 {best.accuracy:.4f}, train step "
        f"{best.step_seconds * 1e3:.2f} ms, {best.params} parameters;\nreward A * "
        f"S^{nas.reward_w} * P^{nas.reward_v} = {best.reward:.4f}. The recipe is the search "
        f"config's\nwithout its `nas` section; the search rewrites this file whenever it finds "
        f"a better\ncandidate.")
    text = f'''"""The best architecture found by effnetv2_jax.nas, as a training config.

    python -m effnetv2_jax.main --config={path} --workdir=DIR

{summary}
"""

from effnetv2_jax.train.config import base_config

BLOCKS = ({blocks}
)


def get_config():
    config = base_config()
''' + "\n".join(_assignments(config, base_config())).replace(
        f"config.model.block_strings = {tuple(best.block_strings)!r}",
        "config.model.block_strings = BLOCKS") + "\n    return config\n"
    epath.Path(path).write_text(text)
