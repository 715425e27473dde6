"""`run_search(config, workdir)`: the training-aware architecture search, importable and resumable.

A search config is a normal training config (the recipe the final network will be trained
with) plus a `nas` section (`nas_defaults()` documents every key). For each candidate the
strategy proposes block strings from the space; `candidate_config` turns the training config
into its proxy run (one progressive stage at the reduced image size, a short budget, no
intermediate evaluations); `proxy.train_candidate` trains and measures it in
`<workdir>/candidates/<id>/`; the reward A * S^w * P^v scores it; the record goes to the log.

Every process runs every candidate over the whole mesh (one candidate at a time); only
process 0 writes the log, `best_config.py` and `pareto.png`. The log is read by process 0 and
broadcast, so hosts need not share a filesystem for the search to agree.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import jax
import ml_collections
from absl import logging

from effnetv2_jax.models.block_spec import encode_all
from effnetv2_jax.models.variants import get_variant
from effnetv2_jax.nas import log, outputs, plot, proxy
from effnetv2_jax.nas.reward import check_exponents, reward
from effnetv2_jax.nas.space import SearchSpace
from effnetv2_jax.nas.strategies import STRATEGIES, make_strategy
from effnetv2_jax.progress import progress
from effnetv2_jax.train import progressive, sharding
from effnetv2_jax.train.config import validate

# Errors that say "this architecture cannot be trained here" (it does not fit, its loss
# diverged, the model refuses its shape): the candidate is recorded as failed, never retried.
# Anything else (a killed process, a full disk) stops the search, and a restart retries it.
CANDIDATE_ERRORS = (ValueError, MemoryError, FloatingPointError)
# This many consecutive failures with the same message mean the config, not the candidates,
# is broken: the search stops instead of burning its budget.
MAX_SAME_FAILURES = 3


def nas_defaults() -> ml_collections.ConfigDict:
    """The `nas` section of a search config, with the paper's values as defaults."""
    n = ml_collections.ConfigDict()
    n.strategy = "evolution"        # random | evolution (regularised / aging evolution)
    n.num_candidates = 20           # the budget: candidates evaluated in all (resumes count)
    n.seed = 0                      # proposals are a function of (seed, index, the log)
    n.population_size = 8           # evolution: population (the first ones are random)
    n.sample_size = 3               # evolution: tournament size
    n.reward_w = -0.07              # exponent of step time S (paper section 3.3)
    n.reward_v = -0.05              # exponent of parameters P (paper section 3.3)
    n.image_size = 0                # proxy train and eval size, pixels; 0: the first
                                    # progressive stage's size
    n.train_epochs = 10.0           # proxy budget (the paper trains ~10 epochs)
    n.train_steps = 0               # > 0 overrides train_epochs
    n.timed_steps = 5               # S = median of this many timed train steps
    n.base_blocks = ()              # base network (stage count, strides, filters);
                                    # (): model.block_strings, else the variant's
    n.conv_types = ("mbconv", "fused")
    n.repeat_deltas = (-1, 0, 1)    # layers per stage = base repeats + delta (>= 1)
    n.kernel_sizes = (3, 5)
    n.expand_ratios = (1, 4, 6)
    n.se_choices = (False, True)    # squeeze-and-excitation off / on
    n.se_ratio = 0.25
    n.top_k = 5                     # candidates the CLI prints
    return n


def add_nas(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A training config with the default `nas` section added (for search config files)."""
    with config.unlocked():
        config.nas = nas_defaults()
    return config


def split(config: ml_collections.ConfigDict):
    """(training config without `nas`, the `nas` section)."""
    if "nas" not in config:
        raise ValueError("the config has no `nas` section: start the config file from "
                         "effnetv2_jax.nas.add_nas(training_config) "
                         "(see configs/nas_quickstart.py)")
    train_config = config.copy_and_resolve_references()
    with train_config.unlocked():
        nas = train_config.nas
        del train_config["nas"]
    return train_config, nas


def validate_nas(nas: ml_collections.ConfigDict) -> None:
    """Fails fast, naming the key, on settings the search cannot run with."""
    if nas.strategy not in STRATEGIES:
        raise ValueError(f"nas.strategy={nas.strategy!r} is not one of {', '.join(STRATEGIES)}")
    for key in ("num_candidates", "timed_steps", "top_k"):
        if nas[key] < 1:
            raise ValueError(f"nas.{key}={nas[key]} must be >= 1")
    if nas.image_size < 0 or 0 < nas.image_size < 8:
        raise ValueError(f"nas.image_size={nas.image_size} must be 0 (the first progressive "
                         f"stage's size) or >= 8 pixels")
    if nas.train_steps < 0 or nas.train_epochs < 0 or (nas.train_steps == 0
                                                         and nas.train_epochs == 0):
        raise ValueError(f"the proxy budget nas.train_steps={nas.train_steps} / "
                         f"nas.train_epochs={nas.train_epochs} must be >= 0 and not both 0")
    check_exponents(nas.reward_w, nas.reward_v)


def make_space(nas: ml_collections.ConfigDict,
               train_config: ml_collections.ConfigDict) -> SearchSpace:
    base = (tuple(nas.base_blocks) or tuple(train_config.model.block_strings)
            or get_variant(train_config.model.name).arch.block_strings)
    return SearchSpace.create(base, conv_types=tuple(nas.conv_types),
                              repeat_deltas=tuple(nas.repeat_deltas),
                              kernel_sizes=tuple(nas.kernel_sizes),
                              expand_ratios=tuple(nas.expand_ratios),
                              se_choices=tuple(bool(s) for s in nas.se_choices),
                              se_ratio=nas.se_ratio)


def _first_stage(train_config: ml_collections.ConfigDict) -> progressive.Stage:
    p = train_config.progressive
    if p.preset == "custom":
        schedule = progressive.Schedule(*(tuple(p[k]) for k in (
            "image_size", "randaug_magnitude", "mixup_alpha", "cutmix_alpha", "dropout_rate")))
    else:
        schedule = progressive.preset(train_config.model.name, p.preset, p.num_stages)
    return progressive.make_stages(schedule, p.num_stages, p.num_stages)[0]


def candidate_config(train_config: ml_collections.ConfigDict, nas: ml_collections.ConfigDict,
                     block_strings, compile_cache_dir: str = "") -> ml_collections.ConfigDict:
    """The proxy run of one candidate: the training recipe with the candidate's blocks, one
    progressive stage with the recipe's first-stage regularisation (weak, as the paper's
    small-size early stages) at `nas.image_size`, the proxy budget, one evaluation at the end
    and one checkpoint (so an interrupted candidate resumes)."""
    config = train_config.copy_and_resolve_references()
    first = _first_stage(train_config)
    size = nas.image_size or first.image_size
    config.mode = "train_and_eval"
    config.model.block_strings = tuple(block_strings)
    p = config.progressive
    p.num_stages, p.preset, p.image_size = 1, "custom", (size, size)
    p.randaug_magnitude = (first.randaug_magnitude,) * 2
    p.mixup_alpha, p.cutmix_alpha = (first.mixup_alpha,) * 2, (first.cutmix_alpha,) * 2
    p.dropout_rate = (first.dropout_rate,) * 2
    config.eval.image_size, config.eval.every_steps = size, 0
    config.train.num_steps, config.train.num_epochs = nas.train_steps, nas.train_epochs
    config.train.profile_steps = 0
    config.checkpoint.every_steps = 2**30    # the final step is always saved
    config.checkpoint.keep_latest, config.checkpoint.keep_best = 1, 0
    if config.checkpoint.compile_cache_dir == "" and compile_cache_dir:
        # Shared by the candidates: measuring S compiles the step, training then loads it.
        config.checkpoint.compile_cache_dir = compile_cache_dir
    return config


@dataclasses.dataclass(frozen=True)
class SearchResult:
    records: list[log.Record]
    best: log.Record | None
    workdir: str

    def top(self, k: int) -> list[log.Record]:
        """The k best successful candidates by reward (ties: the earlier one)."""
        return outputs.ranked(self.records)[:k]


def _is_candidate_error(error: Exception) -> bool:
    if isinstance(error, CANDIDATE_ERRORS):
        return True
    return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def _check_failures(records: list[log.Record]) -> None:
    tail = records[-MAX_SAME_FAILURES:]
    if (len(tail) == MAX_SAME_FAILURES and all(not r.ok and r.reused is None for r in tail)
            and len({r.error for r in tail}) == 1):
        raise RuntimeError(f"the last {MAX_SAME_FAILURES} candidates all failed with: "
                           f"{tail[0].error}. That is a problem of the config, not of the "
                           f"architectures; fix it (the log keeps these as failed).")


def _evaluate(index: int, proposal, records, train_config, nas, workdir) -> log.Record:
    record_id = log.candidate_id(index)
    common = {"index": index, "id": record_id, "block_strings": proposal.block_strings,
              "parent": proposal.parent}
    earlier = next((r for r in records if r.block_strings == proposal.block_strings
                    and r.reused is None), None)
    if earlier is not None:  # the space is (nearly) exhausted: repeat its figures
        fields = {k: getattr(earlier, k) for k in ("status", "accuracy", "step_seconds",
                                                   "params", "flops", "reward", "error")}
        return log.Record(**common, **fields, reused=earlier.index)
    config = candidate_config(train_config, nas, proposal.block_strings,
                              os.path.join(workdir, "compile_cache"))
    start = time.perf_counter()
    try:
        result = proxy.train_candidate(config, os.path.join(workdir, "candidates", record_id),
                                       timed_steps=nas.timed_steps)
    except Exception as error:  # noqa: BLE001 - sorted into candidate / search errors below
        if not _is_candidate_error(error):
            raise
        logging.warning("candidate %s %s failed: %s", record_id, proposal.block_strings, error)
        return log.Record(**common, status="failed", seconds=time.perf_counter() - start,
                          error=f"{type(error).__name__}: {str(error).splitlines()[0][:500]}")
    return log.Record(**common, status="ok", accuracy=result.accuracy,
                      step_seconds=result.step_seconds, params=result.params,
                      flops=result.flops,
                      reward=reward(result.accuracy, result.step_seconds, result.params,
                                    w=nas.reward_w, v=nas.reward_v),
                      seconds=time.perf_counter() - start)


def _write_outputs(workdir: str, records, train_config, nas) -> log.Record | None:
    ranked = outputs.ranked(records)
    best = ranked[0] if ranked else None
    if jax.process_index() == 0:
        log.write(workdir, records)
        if best is not None:
            outputs.write_best_config(os.path.join(workdir, outputs.BEST_CONFIG), train_config,
                                      best, nas, len(records),
                                      proxy_size=nas.image_size or _first_stage(
                                          train_config).image_size)
            plot.plot_pareto(records, os.path.join(workdir, plot.PARETO_NAME),
                             best_index=best.index)
    return best


def run_search(config: ml_collections.ConfigDict, workdir: str,
               on_record: Callable[[log.Record], None] | None = None) -> SearchResult:
    """Runs (or resumes) the search described by `config` in `workdir`.

    Args:
      config: a training config with a `nas` section (see `nas_defaults`).
      workdir: the log `candidates.jsonl`, `candidates/<id>/` (each proxy run),
        `best_config.py` and `pareto.png`.
      on_record: called with each new record (the CLI prints it).
    Returns:
      every record (the log's and the new ones) and the best by reward.
    """
    train_config, nas = split(config)
    validate_nas(nas)
    space = make_space(nas, train_config)
    # Config errors surface now, not as one failed candidate after another.
    validate(candidate_config(train_config, nas, encode_all(space.base)))
    workdir = workdir if "://" in workdir else os.path.abspath(workdir)
    sharding.initialize_distributed(config.distributed.coordinator_address,
                                    config.distributed.num_processes,
                                    config.distributed.process_id)
    strategy = make_strategy(nas.strategy, space, nas.seed, population_size=nas.population_size,
                             sample_size=nas.sample_size)
    logging.info("search space: %d stages, %d architectures; strategy %s, %d candidates",
                 space.num_stages, space.size(), nas.strategy, nas.num_candidates)

    records: list[log.Record] = []
    for record in log.read(workdir):  # replay: the strategy must propose what the log says
        proposal = strategy.propose(record.index, {r.block_strings for r in records})
        if proposal.block_strings != record.block_strings:
            raise ValueError(
                f"{log.LOG_NAME} in {workdir} was written by a different search: candidate "
                f"{record.id} is {list(record.block_strings)} there, but this config proposes "
                f"{list(proposal.block_strings)}. Keep the nas.* settings (seed, strategy, "
                f"space, reward exponents) of the logged search, or use a new workdir.")
        if record.ok:  # scored with this config's exponents, which may have been changed
            record = dataclasses.replace(record, reward=reward(
                record.accuracy, record.step_seconds, record.params, w=nas.reward_w,
                v=nas.reward_v))
        strategy.observe(record.index, record.block_strings, record.reward)
        records.append(record)
    if records:
        logging.info("resumed: %d of %d candidates already in the log", len(records),
                     nas.num_candidates)

    best = _write_outputs(workdir, records, train_config, nas) if records else None
    for index in progress(range(len(records), nas.num_candidates), total=nas.num_candidates,
                          initial=len(records), desc="nas", unit="candidate"):
        _check_failures(records)
        proposal = strategy.propose(index, {r.block_strings for r in records})
        record = _evaluate(index, proposal, records, train_config, nas, workdir)
        strategy.observe(index, record.block_strings, record.reward)
        records.append(record)
        best = _write_outputs(workdir, records, train_config, nas)
        logging.info("candidate %d/%d: %s", index + 1, nas.num_candidates,
                     outputs.describe(record))
        if on_record is not None:
            on_record(record)
    return SearchResult(records=records, best=best, workdir=workdir)
