"""A step compiled through a stored `jax.export` artifact is the same program as `jax.jit` of it:
same outputs, donation kept, and a damaged or mismatched artifact is traced again, never used."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from effnetv2_jax.train import exported_steps


def _step(state, batch):
    """A train-step-shaped function: new state and a metrics dict."""
    w = state["w"] - 0.1 * batch["x"].T @ jnp.tanh(batch["x"] @ state["w"])
    return {"w": w, "count": state["count"] + 1}, {"loss": jnp.mean(w ** 2),
                                                    "seen": batch["x"].shape[0]}


@pytest.fixture
def args():
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(
        mesh, PartitionSpec("data"))
    abstract = ({"w": jax.ShapeDtypeStruct((4, 4), jnp.float32, sharding=replicated),
                 "count": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)},
                {"x": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=sharded)})
    rng = np.random.default_rng(0)
    concrete = ({"w": jnp.asarray(rng.standard_normal((4, 4)), jnp.float32),
                 "count": jnp.asarray(3, jnp.int32)},
                {"x": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)})
    return abstract, concrete, replicated


def _compile(abstract, replicated, cache_dir, description=None, accept=None):
    return exported_steps.compile_step(_step, abstract, name="train_8px",
                                       description=description or {"stage": 0},
                                       out_sharding=replicated, donate_first=True,
                                       cache_dir=cache_dir, accept=accept)


def _copy(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def test_stored_step_equals_jit_and_donates(args, tmp_path):
    abstract, concrete, replicated = args
    want = jax.jit(_step)(*concrete)
    first, stored = _compile(abstract, replicated, str(tmp_path))
    assert not stored and len(list((tmp_path / "exported").glob("train_8px-*.jexp"))) == 1
    second, stored = _compile(abstract, replicated, str(tmp_path))
    assert stored
    for step in (first, second):
        state = _copy(concrete[0])
        got = step(state, concrete[1])
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b)
        assert state["w"].is_deleted()  # the state was donated
    with pytest.raises(TypeError, match="compiled for"):
        second({"w": concrete[0]["w"]}, concrete[1])


def test_damaged_or_other_artifacts_are_traced_again(args, tmp_path, caplog):
    abstract, concrete, replicated = args
    _compile(abstract, replicated, str(tmp_path))
    (path,) = (tmp_path / "exported").glob("*.jexp")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    step, stored = _compile(abstract, replicated, str(tmp_path))
    assert not stored and "tracing it again" in caplog.text
    np.testing.assert_array_equal(step(_copy(concrete[0]), concrete[1])[1]["loss"],
                                  jax.jit(_step)(*concrete)[1]["loss"])
    assert _compile(abstract, replicated, str(tmp_path))[1]  # rewritten whole
    # Another description or other shapes: another key, another file.
    assert not _compile(abstract, replicated, str(tmp_path), {"stage": 1})[1]
    wider = (abstract[0], {"x": jax.ShapeDtypeStruct((16, 4), jnp.float32,
                                                     sharding=abstract[1]["x"].sharding)})
    assert not _compile(wider, replicated, str(tmp_path))[1]
    assert len(list((tmp_path / "exported").glob("*.jexp"))) == 3


def test_no_cache_dir_writes_nothing(args, tmp_path, monkeypatch):
    abstract, concrete, replicated = args
    monkeypatch.chdir(tmp_path)
    step, stored = _compile(abstract, replicated, None)
    assert not stored and not list(tmp_path.iterdir())
    assert int(step(_copy(concrete[0]), concrete[1])[0]["count"]) == 4


def test_key_follows_sources_and_description(args):
    abstract, _, _ = args
    key = exported_steps.step_key("train", {"a": 1}, abstract)
    assert key == exported_steps.step_key("train", {"a": 1}, abstract)
    assert key != exported_steps.step_key("train", {"a": 2}, abstract)
    assert key != exported_steps.step_key("eval", {"a": 1}, abstract)
    assert len(exported_steps._source_digest()) == 64


def test_only_an_accepted_step_is_stored(args, tmp_path):
    abstract, concrete, replicated = args

    def refuse(step):
        assert step.memory_analysis() is not None
        raise MemoryError("does not fit")

    with pytest.raises(MemoryError, match="does not fit"):
        _compile(abstract, replicated, str(tmp_path), accept=refuse)
    assert not exported_steps.is_stored("train_8px", {"stage": 0}, abstract, str(tmp_path))
    seen = []
    _compile(abstract, replicated, str(tmp_path), accept=seen.append)
    assert len(seen) == 1
    assert exported_steps.is_stored("train_8px", {"stage": 0}, abstract, str(tmp_path))
    assert not exported_steps.is_stored("train_8px", {"stage": 1}, abstract, str(tmp_path))
    assert not exported_steps.is_stored("train_8px", {"stage": 0}, abstract, None)


def test_lazy_steps_compile_once_at_first_lookup(args, tmp_path):
    abstract, concrete, replicated = args
    calls = []

    def compile_fn(description):
        calls.append(description)
        return _compile(abstract, replicated, str(tmp_path), description)[0]

    steps = exported_steps.LazySteps()
    steps.add("now", lambda: compile_fn({"stage": 0}), now=True)
    steps.add("later", lambda: compile_fn({"stage": 1}), now=False)
    assert calls == [{"stage": 0}] and steps.compiled_keys() == ["now"]
    assert set(steps) == {"now", "later"} and len(steps) == 2
    assert int(steps["later"](_copy(concrete[0]), concrete[1])[0]["count"]) == 4
    assert steps["later"] is steps["later"] and calls == [{"stage": 0}, {"stage": 1}]
    with pytest.raises(KeyError, match="added already"):
        steps.add("now", lambda: compile_fn({"stage": 0}), now=False)
    with pytest.raises(KeyError):
        steps["missing"]  # noqa: B018
