"""Training-aware architecture search: space, reward, strategies, log, and a real search on CPU.

The end-to-end test trains 3 tiny candidates (2 blocks, 32 px, 2 steps, synthetic data) through
the real training loop, in two sittings (2 candidates, then a resume to 3), and checks what the
search leaves: the log, best_config.py (loaded and validated as a training config) and
pareto.png.
"""

import importlib.util
import itertools
import json
import math
import os
import sys

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from effnetv2_jax.models import count_flops, count_params, decode_all
from effnetv2_jax.nas import (PAPER_V, PAPER_W, AgingEvolution, RandomSearch, Record, SearchSpace,
                              add_nas, log, proxy, reward, run_search)
from effnetv2_jax.nas.plot import pareto_front
from effnetv2_jax.nas.search import candidate_config, make_space, split, validate_nas
from effnetv2_jax.nas.space import FIELDS
from effnetv2_jax.train.config import validate

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "configs"))
import tiny  # noqa: E402

QUICKSTART_BLOCKS = ("r1_k3_s1_e1_i16_o16_c1", "r2_k3_s2_e4_i16_o32_c1",
                     "r2_k3_s2_e4_i32_o48_se0.25", "r2_k3_s2_e4_i48_o64_se0.25")


# ---- the space ------------------------------------------------------------------------------

def test_space_produces_only_valid_members():
    space = SearchSpace.create(QUICKSTART_BLOCKS)
    base = decode_all(QUICKSTART_BLOCKS)
    seen = set()
    for seed in range(300):
        candidate = space.sample(np.random.default_rng(seed))
        specs = decode_all(candidate)  # raises on any malformed string
        assert len(specs) == len(base)
        for spec, stage in zip(specs, base):
            # The paper keeps the base's strides and channels; only the searched fields move.
            assert (spec.stride, spec.input_filters, spec.output_filters) == (
                stage.stride, stage.input_filters, stage.output_filters)
            assert spec.kernel_size in (3, 5) and spec.expand_ratio in (1, 4, 6)
            assert spec.repeats in {max(1, stage.repeats + d) for d in (-1, 0, 1)}
            assert spec.se_ratio in (None, 0.25)
        assert space.contains(candidate)
        child = space.mutate(candidate, np.random.default_rng(seed + 1000))
        assert space.contains(child) and child != candidate
        changed = [(s, f) for s, (a, b) in enumerate(zip(space.choices_of(candidate),
                                                         space.choices_of(child)))
                   for f in FIELDS if a[f] != b[f]]
        assert len(changed) == 1  # a mutation changes exactly one field of one stage
        seen.add(candidate)
    assert len(seen) > 250  # 20,736 members: samples rarely repeat
    # stage 0 has 1 repeat: deltas -1/0/+1 clip to {1, 2}; the others have 3 options
    assert space.size() == (2 * 2 * 2 * 3 * 2) * (2 * 3 * 2 * 3 * 2) ** 3
    assert not space.contains(("r2_k7_s1_e1_i16_o16_c1",) + QUICKSTART_BLOCKS[1:])
    assert not space.contains(QUICKSTART_BLOCKS[:3])


def test_every_member_of_a_one_stage_space_builds():
    space = SearchSpace.create(["r2_k3_s2_e4_i8_o16"])
    members = [space.build([dict(zip(FIELDS, values))]) for values in itertools.product(
        *space.options(0).values())]
    assert len(set(members)) == space.size() == 2 * 3 * 2 * 3 * 2
    for strings in members:
        assert count_flops("efficientnetv2-s", 32, num_classes=10, block_strings=strings) > 0
    # Fused-MBConv with expansion 1 and SE, MBConv with expansion 1: real, trainable models.
    for strings in (("r1_k5_s2_e1_i8_o16_se0.25_c1",), ("r3_k3_s2_e1_i8_o16",)):
        assert strings in members
        assert count_params("efficientnetv2-s", num_classes=10, block_strings=strings,
                            feature_size=32)["trainable"] > 0


@pytest.mark.parametrize("change, message", [
    ({"expand_ratios": (1, 7)}, "expand_ratios"),
    ({"kernel_sizes": (3, 4)}, "kernel_sizes"),
    ({"kernel_sizes": ()}, "kernel_sizes is empty"),
    ({"conv_types": ("mbconv", "dw")}, "unknown conv type"),
    ({"conv_types": ()}, "conv_types is empty"),
    ({"repeat_deltas": (0, 0)}, "repeat_deltas"),
    ({"se_ratio": 1.5}, "se_ratio"),
])
def test_bad_space_fails_fast(change, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace.create(QUICKSTART_BLOCKS, **change)


def test_empty_base_fails_fast():
    with pytest.raises(ValueError, match="no stages"):
        SearchSpace.create([])
    with pytest.raises(ValueError, match="single string"):
        SearchSpace.create("r1_k3_s1_e1_i8_o8")


@pytest.mark.parametrize("key, value, message", [
    ("num_candidates", 0, "nas.num_candidates=0"),
    ("reward_w", 0.07, "w=0.07 must be finite and <= 0"),
    ("reward_v", 0.05, "v=0.05"),
    ("strategy", "grid", "nas.strategy='grid'"),
    ("image_size", 4, "nas.image_size=4"),
    ("timed_steps", 0, "nas.timed_steps=0"),
    ("train_epochs", 0.0, "proxy budget"),
])
def test_bad_search_settings_fail_fast(key, value, message):
    config = add_nas(tiny.get_config())
    config.nas[key] = value
    with pytest.raises(ValueError, match=message):
        validate_nas(split(config)[1])


def test_search_refuses_bad_settings_before_training(tmp_path):
    config = _search_config(num_candidates=2)
    config.nas.expand_ratios = (1, 7)
    with pytest.raises(ValueError, match="expand_ratios"):
        run_search(config, str(tmp_path))
    config = _search_config(num_candidates=2)
    config.nas.population_size = 1
    with pytest.raises(ValueError, match="population_size"):
        run_search(config, str(tmp_path))
    assert not os.listdir(tmp_path)  # nothing was trained or written


# ---- the reward -----------------------------------------------------------------------------

def test_reward_is_the_papers():
    assert (PAPER_W, PAPER_V) == (-0.07, -0.05)  # EfficientNetV2 section 3.3
    a, s, p = 0.8, 0.25, 2_000_000
    assert reward(a, s, p) == pytest.approx(math.exp(math.log(a) - 0.07 * math.log(s)
                                                     - 0.05 * math.log(p)), rel=1e-12)
    # With w = -0.07, a network twice as slow needs 2^0.07 (~5%) more accuracy to tie;
    # with v = -0.05, twice the parameters need 2^0.05 more.
    assert reward(a * 2 ** 0.07, 2 * s, p) == pytest.approx(reward(a, s, p), rel=1e-12)
    assert reward(a * 2 ** 0.05, s, 2 * p) == pytest.approx(reward(a, s, p), rel=1e-12)
    assert reward(a, 2 * s, p) < reward(a, s, p) and reward(a, s, 2 * p) < reward(a, s, p)
    assert reward(a, s, p, w=0.0, v=0.0) == a
    assert reward(a, s, p, w=-0.5, v=0.0) == pytest.approx(a / math.sqrt(s))
    # Units only scale every reward alike (ms instead of s): the ranking is unchanged.
    ratio = [reward(x, t * 1000, p) / reward(x, t, p) for x, t in ((0.5, 0.1), (0.9, 0.3))]
    assert ratio[0] == pytest.approx(ratio[1])


@pytest.mark.parametrize("args, kwargs, message", [
    ((1.2, 0.1, 10), {}, "accuracy"), ((0.5, 0.0, 10), {}, "step_seconds"),
    ((0.5, 0.1, 0), {}, "params"), ((0.5, 0.1, 10), {"w": 0.1}, "w=0.1"),
    ((0.5, 0.1, 10), {"v": float("nan")}, "v=nan"),
])
def test_reward_rejects_bad_input(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        reward(*args, **kwargs)


# ---- strategies -----------------------------------------------------------------------------

def _score(strings) -> float:
    """A made-up, deterministic reward: fewer layers and smaller expansions score higher."""
    specs = decode_all(strings)
    return 1.0 / (1 + sum(s.repeats * s.expand_ratio for s in specs))


def _drive(strategy, count, start=0, seen=None):
    seen = [] if seen is None else seen
    proposals = []
    for index in range(start, start + count):
        proposal = strategy.propose(index, set(seen))
        strategy.observe(index, proposal.block_strings, _score(proposal.block_strings))
        seen.append(proposal.block_strings)
        proposals.append(proposal)
    return proposals


def test_evolution_is_deterministic_replayable_and_mutates_the_population():
    space = SearchSpace.create(QUICKSTART_BLOCKS)
    make = lambda seed: AgingEvolution(space, seed, population_size=5, sample_size=3)  # noqa: E731
    first = _drive(make(0), 30)
    assert _drive(make(0), 30) == first  # same seed, same search
    assert _drive(make(1), 30) != first
    assert all(p.parent is None for p in first[:5]) and all(p.parent is not None
                                                           for p in first[5:])
    for index, proposal in enumerate(first[5:], 5):
        parent = first[proposal.parent].block_strings
        assert index - 5 <= proposal.parent < index  # from the 5 youngest (aging)
        diff = [1 for a, b in zip(space.choices_of(parent),
                                  space.choices_of(proposal.block_strings))
                for f in FIELDS if a[f] != b[f]]
        assert len(diff) == 1
    assert len({p.block_strings for p in first}) == 30  # no architecture evaluated twice
    # Resume: replaying the first 12 results reproduces the remaining proposals exactly.
    resumed = make(0)
    seen = []
    for index, proposal in enumerate(first[:12]):
        assert resumed.propose(index, set(seen)) == proposal
        resumed.observe(index, proposal.block_strings, _score(proposal.block_strings))
        seen.append(proposal.block_strings)
    assert _drive(resumed, 18, start=12, seen=seen) == first[12:]
    # Selection pressure: the evolved half beats the random half on the made-up reward.
    assert np.mean([_score(p.block_strings) for p in first[15:]]) > np.mean(
        [_score(p.block_strings) for p in first[:5]])


def test_random_search_is_deterministic_and_independent_of_results():
    space = SearchSpace.create(QUICKSTART_BLOCKS)
    a = [RandomSearch(space, 3).propose(i).block_strings for i in range(10)]
    b = _drive(RandomSearch(space, 3), 10)
    assert a == [p.block_strings for p in b] and len(set(a)) == 10


# ---- the log --------------------------------------------------------------------------------

def test_log_round_trip_and_damage(tmp_path):
    records = [Record(index=0, id="c0000", status="ok", block_strings=("r1_k3_s1_e1_i8_o8",),
                      accuracy=0.5, step_seconds=0.01, params=100, flops=1000, reward=0.7),
               Record(index=1, id="c0001", status="failed", block_strings=("r1_k5_s1_e1_i8_o8",),
                      error="MemoryError: too big")]
    log.write(str(tmp_path), records)
    assert log.read(str(tmp_path)) == records
    path = tmp_path / log.LOG_NAME
    path.write_text(path.read_text() + '{"index": 2, "id": "c00')  # half a line
    with pytest.raises(ValueError, match="line 3 is not a candidate record"):
        log.read(str(tmp_path))


def test_pareto_front():
    def r(i, a, s):
        return Record(index=i, id=log.candidate_id(i), status="ok", block_strings=("x",),
                      accuracy=a, step_seconds=s, params=1, flops=1, reward=a)
    records = [r(0, 0.5, 1.0), r(1, 0.6, 2.0), r(2, 0.55, 3.0), r(3, 0.9, 4.0), r(4, 0.4, 0.5)]
    assert [x.index for x in pareto_front(records)] == [4, 0, 1, 3]


# ---- a real search --------------------------------------------------------------------------

def _search_config(num_candidates: int, **nas):
    config = add_nas(tiny.get_config())
    config.checkpoint.compile_cache_dir = ""  # the search shares one cache between candidates
    n = config.nas
    n.strategy, n.num_candidates = "evolution", num_candidates
    n.population_size, n.sample_size = 2, 2
    n.image_size, n.train_steps, n.timed_steps = 32, 2, 2
    n.repeat_deltas, n.kernel_sizes, n.expand_ratios = (0,), (3,), (1, 4)   # 64 networks
    for key, value in nas.items():
        n[key] = value
    return config


@pytest.fixture
def counted_training(monkeypatch):
    """Counts the real proxy trainings (a spy: every call still trains)."""
    calls = []
    real = proxy.train_candidate

    def counting(config, workdir, **kwargs):
        calls.append(tuple(config.model.block_strings))
        return real(config, workdir, **kwargs)

    monkeypatch.setattr(proxy, "train_candidate", counting)
    return calls


@pytest.fixture
def restore_compile_cache():
    before = jax.config.jax_compilation_cache_dir
    yield
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", before)


def _load_config_file(path):
    spec = importlib.util.spec_from_file_location("best_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.slow  # a search of several trainings, end to end
def test_search_end_to_end_with_resume(tmp_path, counted_training, restore_compile_cache):
    workdir = str(tmp_path / "search")
    first = run_search(_search_config(2), workdir)
    assert len(counted_training) == 2 and len(first.records) == 2

    # A restarted search with a larger budget trains only the new candidate.
    result = run_search(_search_config(3), workdir)
    assert len(counted_training) == 3 and result.records[:2] == first.records
    # The third is evolution's: a one-field mutation of the better of the first two.
    third = result.records[2]
    assert third.parent == max(first.records, key=lambda r: (r.reward, -r.index)).index
    assert counted_training[2] == third.block_strings

    # Nothing left to do: no training at all, the same answer.
    again = run_search(_search_config(3), workdir)
    assert len(counted_training) == 3 and again.records == result.records

    lines = (tmp_path / "search" / log.LOG_NAME).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["c0000", "c0001", "c0002"]
    config = _search_config(3)
    train_config, nas = split(config)
    space = make_space(nas, train_config)
    for record in result.records:
        assert record.ok and space.contains(record.block_strings)
        assert 0.0 <= record.accuracy <= 1.0 and record.step_seconds > 0
        assert record.params == count_params("efficientnetv2-s", num_classes=4, feature_size=32,
                                             block_strings=record.block_strings)["trainable"]
        assert record.flops == count_flops("efficientnetv2-s", 32, num_classes=4,
                                           feature_size=32, block_strings=record.block_strings)
        assert record.reward == pytest.approx(reward(record.accuracy, record.step_seconds,
                                                     record.params))
        assert os.path.isdir(tmp_path / "search" / "candidates" / record.id / "checkpoints")
    assert result.best == max(result.records, key=lambda r: (r.reward, -r.index))
    assert result.top(2)[0] == result.best

    # best_config.py is a normal training config: the search's recipe with the best blocks.
    best_config = _load_config_file(tmp_path / "search" / "best_config.py")
    validate(best_config)
    assert tuple(best_config.model.block_strings) == result.best.block_strings
    expected = train_config.copy_and_resolve_references()
    expected.model.block_strings = result.best.block_strings
    assert best_config.to_dict() == expected.to_dict()
    with open(tmp_path / "search" / "pareto.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # The log belongs to its search: another seed proposes other networks and is refused.
    with pytest.raises(ValueError, match="written by a different search"):
        run_search(_search_config(3, seed=1), workdir)


def test_candidate_config_is_a_short_one_stage_run():
    train_config, nas = split(_search_config(3))
    blocks = ("r1_k3_s1_e4_i8_o8_c1", "r1_k3_s2_e1_i8_o16")
    config = candidate_config(train_config, nas, blocks, "/cache")
    validate(config)
    assert tuple(config.model.block_strings) == blocks
    assert config.progressive.num_stages == 1 and tuple(config.progressive.image_size) == (32, 32)
    # tiny's first-stage regularisation: no mixup/cutmix/dropout, RandAugment magnitude 2
    assert tuple(config.progressive.mixup_alpha) == (0.0, 0.0)
    assert tuple(config.progressive.randaug_magnitude) == (2.0, 2.0)
    assert config.eval.image_size == 32 and config.train.num_steps == 2
    assert config.mode == "train_and_eval" and config.checkpoint.compile_cache_dir == "/cache"
    assert tuple(train_config.model.block_strings) == tiny.get_config().model.block_strings


def test_failed_candidates_are_recorded_and_not_retried(tmp_path, counted_training):
    config = _search_config(2)
    config.train.global_batch_size = 6  # does not divide over the 4 test devices
    result = run_search(config, str(tmp_path))
    assert [r.status for r in result.records] == ["failed", "failed"] and result.best is None
    assert "does not divide over 4 devices" in result.records[0].error
    assert len(counted_training) == 2
    run_search(config, str(tmp_path))
    assert len(counted_training) == 2  # recorded failures are not retried
    config.nas.num_candidates = 5
    with pytest.raises(RuntimeError, match="last 3 candidates all failed"):
        run_search(config, str(tmp_path))  # the 3rd fails too; the 4th is not tried
    assert len(counted_training) == 3
