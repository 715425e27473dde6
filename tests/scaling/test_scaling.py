"""Scaling a base into a family: the V1 formula, the V2 rule, configs, CLI and the grid search.

Counts are analytic (`count_flops`) or abstract (`count_params`), so nothing large is built; the
grid search trains two tiny candidates for two steps on synthetic data through the NAS proxy.
"""

import json
import math
import os
from pathlib import Path

import pytest
from config_parsing import parse_command_line

from effnetv2_jax import count_flops, count_params, create_model, get_variant
from effnetv2_jax.models.block_spec import decode_all
from effnetv2_jax.scaling import (ALPHA, BETA, GAMMA, Candidate, base_from_config,
                                  base_from_variant, coefficient_table, compound,
                                  compound_scale, flops_factor, grid_candidates, member_config,
                                  round_resolution, run_grid_search, v2_scale, write_config)
from effnetv2_jax.scaling.__main__ import main as cli_main
from effnetv2_jax.scaling.grid_search import RESULTS_FILE, read_results

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "configs" / "tiny.py"


# ---------------------------------------------------------------- V1 compound scaling


@pytest.mark.parametrize("phi", [0, 0.5, 1, 2, 3, 7])
@pytest.mark.parametrize("multiple", [8, 16])
def test_compound_formula(phi, multiple):
    base = base_from_variant("efficientnet-b0")
    member = compound_scale(base, phi, resolution_multiple=multiple)
    assert member.width == pytest.approx(BETA ** phi)
    assert member.depth == pytest.approx(ALPHA ** phi)
    assert member.block_strings == base.arch.block_strings
    if phi == 0:  # the base itself, its sizes unrounded
        assert (member.train_size, member.eval_size) == (224, 224)
        assert member.arch == base.arch
    else:
        assert member.eval_size % multiple == 0
        assert abs(member.eval_size - 224 * GAMMA ** phi) <= multiple / 2
    # The member goes straight into the model builders: stages deepen by ceil(alpha^phi * r).
    assert member.stage_repeats() == [math.ceil(round(ALPHA ** phi, 9) * r)
                                      for r in (1, 2, 2, 3, 3, 4, 1)]


def test_compound_multiplies_the_base_coefficients_and_rejects_bad_values():
    b2 = base_from_variant("efficientnet-b2")           # width 1.1, depth 1.2, 260 px
    member = compound_scale(b2, 1, 1.3, 1.05, 1.1, resolution_multiple=16)
    assert (member.width, member.depth) == (pytest.approx(1.1 * 1.05), pytest.approx(1.2 * 1.3))
    assert member.eval_size == 288                      # 286 -> nearest multiple of 16
    assert round_resolution(300, 8) == 304 and round_resolution(3, 8) == 8
    with pytest.raises(ValueError, match="phi must be"):
        compound_scale(b2, -1)
    with pytest.raises(ValueError, match="beta must be"):
        compound_scale(b2, 1, beta=0.9)
    with pytest.raises(ValueError, match="resolution_multiple"):
        compound_scale(b2, 1, resolution_multiple=0)


def test_flops_grow_about_two_to_the_phi():
    base = base_from_variant("efficientnet-b0")
    b0 = count_flops("efficientnet-b0")
    assert flops_factor(ALPHA, BETA, GAMMA) == pytest.approx(1.92027)
    previous = b0
    for phi in range(1, 8):
        member = compound_scale(base, phi)
        flops = count_flops(member.arch, member.eval_size)
        # FLOPs(phi) = B0 * g^phi with g within 15% of 2 (measured: 2.23, 2.17, 2.04, 2.01,
        # 1.93, 1.93, 1.93). The plain ratio to 2^phi strays further at phi = 2 (4.69 = +17%):
        # ceil(1.44 * 1) doubles B0's one-block stages.
        assert (flops / b0) ** (1 / phi) == pytest.approx(2.0, rel=0.15), phi
        assert flops > 1.5 * previous
        previous = flops


def test_published_coefficients_stay_in_the_registry_and_in_the_docs():
    # Official `efficientnet_builder.py` (hand-rounded; the formula's values differ, see the docs table).
    published = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260), 3: (1.2, 1.4, 300),
                 4: (1.4, 1.8, 380), 5: (1.6, 2.2, 456), 6: (1.8, 2.6, 528),
                 7: (2.0, 3.1, 600), 8: (2.2, 3.6, 672)}
    for i, (width, depth, size) in published.items():
        variant = get_variant(f"efficientnet-b{i}")
        assert (variant.arch.width, variant.arch.depth, variant.eval_size) == (width, depth, size)
    table = "\n".join(coefficient_table())
    assert table in compound.__doc__, "regenerate the table in scaling/compound.py's docstring"
    b3 = next(row for row in coefficient_table() if row.startswith("| efficientnet-b3 |"))
    assert b3.split(" | ")[1:8] == ["1.2", "1.4", "300", "3", "1.331", "1.728", "344"]


# ---------------------------------------------------------------- the V2 rule


def test_v2_rule_adds_depth_to_the_late_stages_only():
    s = base_from_variant("efficientnetv2-s")
    base_repeats = [2, 4, 4, 6, 9, 15]
    for phi in (1, 2, 3):
        member = v2_scale(s, phi)
        repeats = member.stage_repeats()
        v1_blocks = compound_scale(s, phi).num_blocks
        assert repeats[:4] == base_repeats[:4]                    # stages 1-4 unchanged
        assert repeats[4] > 9 and repeats[5] > 15                 # stages 5 and 6 deeper
        assert sum(repeats) == v1_blocks                          # the V1 block budget
        assert member.depth == 1.0 and member.width == pytest.approx(BETA ** phi)
        assert [spec.repeats for spec in decode_all(member.block_strings)] == repeats
        assert member.eval_size <= 480 and member.eval_size % 16 == 0
    assert (v2_scale(s, 3).train_size, v2_scale(s, 3).eval_size) == (368, 480)  # capped
    explicit = v2_scale(s, 2, late_stages=(4, 6)).stage_repeats()
    assert explicit[4] == 9 and explicit[3] > 6 and explicit[5] > 15
    with pytest.raises(ValueError, match="late_stages"):
        v2_scale(s, 1, late_stages=(7,))


def test_v2_rule_on_s_lands_between_s_and_l():
    """Paper section 4.3: M and L come from S by this rule; measured here with the counters."""
    s = base_from_variant("efficientnetv2-s")
    flops = {n: count_flops(f"efficientnetv2-{n}") for n in "sml"}
    # Trainable parameters of S, M and L: the official unit test's (pinned in tests/models/test_counts.py).
    params = {"s": 21_458_488, "m": 54_139_356, "l": 118_515_272}
    for phi in (1, 2, 3, 4):
        member = v2_scale(s, phi)
        member_flops = count_flops(member.arch, member.eval_size)
        assert flops["s"] < member_flops < flops["l"], phi
    m_like = v2_scale(s, 2)
    m_params = count_params(m_like.arch)["trainable"]
    assert params["s"] < m_params < params["l"]
    # phi = 2 is within 5% of the published M in parameters and FLOPs at 480 px.
    assert m_params == pytest.approx(params["m"], rel=0.05)
    assert count_flops(m_like.arch, m_like.eval_size) == pytest.approx(flops["m"], rel=0.05)


# ---------------------------------------------------------------- configs and CLI


def test_member_config_is_a_config_main_loads(tmp_path):
    config = parse_command_line(f"--config={TINY}")
    base = base_from_config(config, "tiny")
    assert (base.train_size, base.eval_size) == (40, 40)
    member = compound_scale(base, 1)
    scaled = member_config(config, base, member)
    assert scaled.model.width == pytest.approx(1.1) and scaled.model.depth == pytest.approx(1.2)
    assert tuple(scaled.progressive.image_size) == (40, 48) and scaled.eval.image_size == 48
    path = write_config(str(tmp_path / "member.py"), scaled, "A test member.")
    loaded = parse_command_line(f"--config={path}")
    assert loaded.to_dict() == scaled.to_dict()
    model = create_model(member.arch, num_classes=4)   # and the architecture builds
    assert len(model.blocks) == member.num_blocks == 4


def test_cli_prints_the_family_and_writes_configs(tmp_path, capsys):
    out = tmp_path / "family"
    code = cli_main(["prog", f"--base={TINY}", "--phi=1..2", "--rule=both", f"--out={out}",
                     "--base.train.num_steps=3"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines
            if line.split()[0] in ("base", "v1", "v2") and line.split()[1][0].isdigit()]
    assert [r[:2] for r in rows] == [["base", "0"], ["v1", "1"], ["v1", "2"], ["v2", "1"],
                                     ["v2", "2"]]
    assert sorted(os.listdir(out)) == ["tiny_v1_phi1.py", "tiny_v1_phi2.py", "tiny_v2_phi1.py",
                                       "tiny_v2_phi2.py"]
    written = parse_command_line(f"--config={out / 'tiny_v2_phi2.py'}")
    assert written.train.num_steps == 3                  # the base's overrides carry over
    assert written.model.width == pytest.approx(1.21)
    assert rows[4][6] == str(written.eval.image_size)
    assert cli_main(["prog", f"--base={TINY}", "--phi=x"]) == 2


# ---------------------------------------------------------------- grid search


def test_grid_candidates_respect_the_flops_constraint():
    candidates = grid_candidates()
    assert Candidate(1.2, 1.1, 1.15) in candidates          # the paper's result is on the grid
    assert all(abs(c.flops_factor - 2.0) <= 0.1 + 1e-9 for c in candidates)
    tight = grid_candidates(tolerance=0.02)
    assert set(tight) < set(candidates) and all(abs(c.flops_factor - 2) <= 0.02 for c in tight)
    with pytest.raises(ValueError, match="no \\(alpha, beta, gamma\\)"):
        grid_candidates([1.0], [1.0], [1.0])
    with pytest.raises(ValueError, match="alphas"):
        grid_candidates([0.9], [1.1], [1.1])


@pytest.mark.slow  # several trainings, end to end
def test_grid_search_trains_ranks_records_and_resumes(tmp_path):
    config = parse_command_line(f"--config={TINY}", "--config.train.num_steps=2",
                                "--config.progressive.num_stages=1", "--config.data.augment=none",
                                "--config.model.conv_impl=xla",
                                "--config.checkpoint.compile_cache_dir=")
    config.model.block_strings = ("r1_k3_s1_e1_i8_o16_c1",)   # one block: a short compile
    # Same rounded width, depth and sizes: the second compiles from the search's shared cache.
    candidates = [Candidate(1.2, 1.1, 1.15), Candidate(1.2, 1.1, 1.2)]
    workdir = str(tmp_path / "grid")
    records = run_grid_search(config, workdir, candidates)
    assert sorted(r["key"] for r in records) == sorted(c.key for c in candidates)
    accuracies = [r["accuracy"] for r in records]
    assert accuracies == sorted(accuracies, reverse=True)
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    for r in records:
        assert r["phi"] == 1.0 and r["width"] == pytest.approx(1.1)
        assert r["train_size"] == 48 and r["params"] > 0 and r["step_seconds"] > 0
        assert r["flops"] == count_flops(config.model.name, 48, num_classes=4,
                                         block_strings=config.model.block_strings,
                                         feature_size=32, width=1.1, depth=1.2)
        assert r["params"] == count_params(config.model.name, num_classes=4,
                                           block_strings=config.model.block_strings,
                                           feature_size=32, width=1.1, depth=1.2)["trainable"]
    assert len(read_results(workdir)) == 2
    # Resume: a torn line (a kill mid-write) is ignored and finished candidates are skipped.
    with open(os.path.join(workdir, RESULTS_FILE), "a") as f:
        f.write('{"key": "a1.3')
    again = run_grid_search(config, workdir, candidates)
    assert [r["key"] for r in again] == [r["key"] for r in records]
    assert len(read_results(workdir)) == 2
    with pytest.raises(ValueError, match="another base or phi"):
        run_grid_search(config, workdir, candidates, phi=2.0)
    results = [json.loads(line) for line in open(os.path.join(workdir, RESULTS_FILE))
               if line.endswith("}\n")]
    assert {r["key"] for r in results} == {c.key for c in candidates}
