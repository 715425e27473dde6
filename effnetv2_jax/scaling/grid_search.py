"""The V1 grid search for (alpha, beta, gamma) at phi = 1, each candidate proxy-trained.

Tan & Le 2019, section 3.3, step 1: fix phi = 1 (twice the base's FLOPs) and search alpha
(depth), beta (width) and gamma (resolution) under alpha * beta^2 * gamma^2 ~= 2. Here a
candidate is every grid point whose FLOPs factor is within `tolerance` of `target`; each is
scaled from the base with `compound_scale(base, phi, alpha, beta, gamma)`, turned into the base's
own training config (`configs.member_config`), trained by the NAS proxy
(`effnetv2_jax.nas.proxy.train_candidate`, the same short training the architecture search
uses), and ranked by held-out accuracy.

Every finished candidate is one JSON line in `<workdir>/results.jsonl` (coefficients, scaled
width / depth / sizes, accuracy, step seconds, params, FLOPs); candidate k trains in
`<workdir>/candidates/<key>`. Run the same search again and finished candidates are skipped;
an interrupted one resumes from its checkpoint. A candidate that fails (does not fit, loss
diverges) is recorded with its error and ranked last; delete its line to try it again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Sequence

import ml_collections
from absl import logging

from effnetv2_jax.scaling.compound import compound_scale, flops_factor

RESULTS_FILE = "results.jsonl"
# A grid around the paper's result (1.2, 1.1, 1.15) in steps of 0.05-0.1; 29 points pass
# |alpha * beta^2 * gamma^2 - 2| <= 0.1.
DEFAULT_ALPHAS = (1.0, 1.1, 1.2, 1.3, 1.4)
DEFAULT_BETAS = (1.0, 1.05, 1.1, 1.15, 1.2)
DEFAULT_GAMMAS = (1.0, 1.05, 1.1, 1.15, 1.2, 1.25)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One grid point: depth, width and resolution multipliers per unit of phi."""

    alpha: float
    beta: float
    gamma: float

    @property
    def flops_factor(self) -> float:
        return flops_factor(self.alpha, self.beta, self.gamma)

    @property
    def key(self) -> str:
        """A file-name-safe identifier, e.g. "a1.200_b1.100_g1.150"."""
        return f"a{self.alpha:.3f}_b{self.beta:.3f}_g{self.gamma:.3f}"


def grid_candidates(alphas: Sequence[float] = DEFAULT_ALPHAS,
                    betas: Sequence[float] = DEFAULT_BETAS,
                    gammas: Sequence[float] = DEFAULT_GAMMAS, *, target: float = 2.0,
                    tolerance: float = 0.1) -> list[Candidate]:
    """Grid points with |alpha * beta^2 * gamma^2 - target| <= tolerance, in grid order.

    Raises ValueError if a multiplier is below 1 or no point satisfies the constraint.
    """
    for name, values in (("alphas", alphas), ("betas", betas), ("gammas", gammas)):
        if not values or min(values) < 1.0:
            raise ValueError(f"{name}={tuple(values)!r} must be a non-empty list of "
                             f"multipliers >= 1")
    if tolerance < 0 or target <= 1:
        raise ValueError(f"need target > 1 and tolerance >= 0, got target={target!r}, "
                         f"tolerance={tolerance!r}")
    out = [Candidate(float(a), float(b), float(g))
           for a, b, g in itertools.product(alphas, betas, gammas)
           if abs(flops_factor(a, b, g) - target) <= tolerance + 1e-12]
    if not out:
        raise ValueError(f"no (alpha, beta, gamma) on the grid has alpha * beta^2 * gamma^2 "
                         f"within {tolerance} of {target}: widen the grid or the tolerance")
    return out


def read_results(workdir: str) -> list[dict]:
    """The records of `<workdir>/results.jsonl` (a torn last line, from a kill mid-write, is
    skipped with a warning)."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logging.warning("%s line %d is not JSON (a write was cut short?); ignoring it",
                                path, number)
    return records


def _append(workdir: str, record: dict) -> None:
    import jax  # noqa: PLC0415 - the CLI's --help imports this module, and needs no JAX

    if jax.process_index() != 0:  # one writer in a multi-host search
        return
    path = os.path.join(workdir, RESULTS_FILE)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rank(records: Sequence[dict]) -> list[dict]:
    """Best accuracy first; failed candidates (accuracy None) last."""
    return sorted(records, key=lambda r: (r.get("accuracy") is None,
                                          -(r.get("accuracy") or 0.0)))


def run_grid_search(config: ml_collections.ConfigDict, workdir: str,
                candidates: Sequence[Candidate] | None = None, *, phi: float = 1.0,
                resolution_multiple: int = 8) -> list[dict]:
    """Proxy-trains every candidate at `phi` and returns all records, best first.

    Args:
      config: the base's full training config (data, budget, schedule); its model is the base.
        Keep the budget short: every candidate trains with it.
      workdir: holds results.jsonl and one directory per candidate; reuse it to resume.
      candidates: default `grid_candidates()`.
      phi: where the candidates are compared (1 in the paper: twice the base's FLOPs).
      resolution_multiple: image sizes of the scaled candidates are multiples of this.
    Returns:
      dicts with alpha, beta, gamma, flops_factor, phi, width, depth, train_size, eval_size,
      accuracy, step_seconds, params, flops (and error for a failed candidate).
    """
    from effnetv2_jax.nas.proxy import train_candidate  # noqa: PLC0415 (heavy; search only)
    from effnetv2_jax.scaling.configs import base_from_config, member_config  # noqa: PLC0415

    candidates = grid_candidates() if candidates is None else list(candidates)
    os.makedirs(workdir, exist_ok=True)
    base = base_from_config(config)
    setting = {"phi": float(phi), "resolution_multiple": resolution_multiple,
               "base": {"block_strings": list(base.arch.block_strings),
                        "width": base.arch.width, "depth": base.arch.depth,
                        "train_size": base.train_size, "eval_size": base.eval_size}}
    done = {}
    for record in read_results(workdir):
        if record.get("setting") != setting:
            raise ValueError(f"{workdir} holds a search with another base or phi "
                             f"({record.get('setting')}); use a new workdir for {setting}")
        done[record["key"]] = record
    for number, candidate in enumerate(candidates, 1):
        if candidate.key in done:
            logging.info("candidate %d/%d %s: done earlier, skipped", number, len(candidates),
                         candidate.key)
            continue
        member = compound_scale(base, phi, candidate.alpha, candidate.beta, candidate.gamma,
                                resolution_multiple=resolution_multiple)
        record = {"key": candidate.key, "setting": setting, "alpha": candidate.alpha,
                  "beta": candidate.beta, "gamma": candidate.gamma,
                  "flops_factor": candidate.flops_factor, "phi": float(phi),
                  "width": member.width, "depth": member.depth,
                  "train_size": member.train_size, "eval_size": member.eval_size}
        logging.info("candidate %d/%d %s: width %.3f, depth %.3f, %d/%d px", number,
                     len(candidates), candidate.key, member.width, member.depth,
                     member.train_size, member.eval_size)
        candidate_config = member_config(config, base, member, resolution_multiple)
        if not candidate_config.checkpoint.compile_cache_dir:
            # One persistent compile cache for the whole search: candidates whose rounded
            # width, depth and sizes coincide compile once.
            candidate_config.checkpoint.compile_cache_dir = os.path.abspath(
                os.path.join(workdir, "compile_cache"))
        try:
            result = train_candidate(candidate_config,
                                     os.path.join(workdir, "candidates", candidate.key))
        except (MemoryError, FloatingPointError) as error:
            # A result, not a crash: this point of the grid does not train on this budget.
            record.update(accuracy=None, step_seconds=None, params=None, flops=None,
                          error=f"{type(error).__name__}: {error}")
        else:
            record.update(dataclasses.asdict(result))
        _append(workdir, record)
        done[candidate.key] = record
    keys = {c.key for c in candidates}
    return rank([r for k, r in done.items() if k in keys])
