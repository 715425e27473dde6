"""Search strategies: random search and regularised (aging) evolution.

Both are deterministic functions of (seed, candidate index, what was observed before): the
random draws for candidate i come from `np.random.default_rng([seed, i])`, so every process of
a multi-host search proposes the same candidate, and a restarted search that replays its log
through `observe` is in exactly the state it was in before.

Aging evolution (Real et al., 2019, "Regularized Evolution for Image Classifier Architecture
Search"): the first `population_size` successful candidates are random; afterwards each
candidate mutates the best of `sample_size` members drawn from the population, and joins it
while the oldest member leaves. Failed candidates never join the population.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Collection

import numpy as np

from effnetv2_jax.nas.space import SearchSpace

STRATEGIES = ("random", "evolution")
# Draws per candidate to find an architecture not evaluated yet; after that it is evaluated
# (reused) again, which only happens when the space is nearly exhausted.
MAX_REDRAWS = 50


@dataclasses.dataclass(frozen=True)
class Proposal:
    block_strings: tuple[str, ...]
    parent: int | None = None   # index of the mutated candidate (evolution), None if random


class RandomSearch:
    """Uniform samples of the space, avoiding architectures already seen."""

    def __init__(self, space: SearchSpace, seed: int):
        self.space, self.seed = space, seed

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def _fresh(self, draw, seen: Collection[tuple[str, ...]]) -> tuple[str, ...]:
        candidate = draw()
        for _ in range(MAX_REDRAWS):
            if candidate not in seen:
                break
            candidate = draw()
        return candidate

    def propose(self, index: int, seen: Collection[tuple[str, ...]] = ()) -> Proposal:
        rng = self.rng(index)
        return Proposal(self._fresh(lambda: self.space.sample(rng), seen))

    def observe(self, index: int, block_strings: tuple[str, ...], reward: float | None) -> None:
        del index, block_strings, reward  # random search keeps no state


class AgingEvolution(RandomSearch):
    """Regularised evolution with a population of `population_size` and tournaments of
    `sample_size`."""

    def __init__(self, space: SearchSpace, seed: int, *, population_size: int, sample_size: int):
        super().__init__(space, seed)
        if population_size < 2:
            raise ValueError(f"nas.population_size={population_size} must be >= 2")
        if not 1 <= sample_size <= population_size:
            raise ValueError(f"nas.sample_size={sample_size} must be in [1, population_size="
                             f"{population_size}]")
        self.population_size, self.sample_size = population_size, sample_size
        # (index, block strings, reward), oldest first
        self.population: collections.deque = collections.deque()

    def propose(self, index: int, seen: Collection[tuple[str, ...]] = ()) -> Proposal:
        if len(self.population) < self.population_size:
            return super().propose(index, seen)
        rng = self.rng(index)
        picks = rng.choice(len(self.population), size=self.sample_size, replace=False)
        # Ties go to the older member (lower position), which keeps the choice deterministic.
        parent_index, parent, _ = max((self.population[int(p)] for p in sorted(picks)),
                                      key=lambda member: member[2])
        return Proposal(self._fresh(lambda: self.space.mutate(parent, rng), seen),
                        parent=parent_index)

    def observe(self, index: int, block_strings: tuple[str, ...], reward: float | None) -> None:
        if reward is None:
            return
        self.population.append((index, tuple(block_strings), reward))
        if len(self.population) > self.population_size:
            self.population.popleft()


def make_strategy(name: str, space: SearchSpace, seed: int, *, population_size: int = 8,
                  sample_size: int = 3) -> RandomSearch:
    if name == "random":
        return RandomSearch(space, seed)
    if name == "evolution":
        return AgingEvolution(space, seed, population_size=population_size,
                              sample_size=sample_size)
    raise ValueError(f"nas.strategy={name!r} is not one of {', '.join(STRATEGIES)}")
