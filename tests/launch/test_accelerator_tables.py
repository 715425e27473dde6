"""The launcher's accelerator table (launch/accelerators.py, standard library only, so that
`launch/tpu.py` runs without the package installed) and the compile check's
(effnetv2_jax/train/topology.py) describe every slice the same way: a launch and its pre-launch
compile check must never disagree about how many chips, hosts and JAX devices a name means."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "launch"))
import accelerators  # noqa: E402

from effnetv2_jax.train import topology  # noqa: E402


@pytest.mark.parametrize("name", accelerators.valid_names())
def test_both_tables_agree_on_chips_hosts_and_devices(name):
    launched = accelerators.parse_accelerator(name)
    compiled = topology.parse(name)
    per_host = math.prod(compiled.chips_per_host_bounds)
    assert (compiled.chips, compiled.devices) == (launched.chips, launched.devices), name
    assert max(1, compiled.chips // per_host) == launched.hosts, name
    assert compiled.gcloud_name == name


def test_every_generation_the_launcher_knows_can_be_compiled_for():
    launched = {g.prefix for g in accelerators.GENERATIONS.values()}
    compiled = {topology.ALIASES.get(p, p) for p in launched}
    assert compiled <= set(topology.GENERATIONS), compiled - set(topology.GENERATIONS)
