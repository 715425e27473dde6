"""Compile a step without tracing it again on restart: the traced and lowered step is kept as a
`jax.export` artifact beside JAX's persistent compilation cache.

The compilation cache stores executables, but a restarted run must still trace the model to
find the cache key: 4 s per progressive stage for V2-S on this 2-core CPU, most of a warm
restart. Here each step is exported once (StableHLO plus its argument and result trees) to
`<cache dir>/exported/<name>-<key>.jexp`; a restart deserialises it (0.8 s for V2-S), lowers
the call and takes the executable from the compilation cache. The key hashes everything the
traced program depends on: the package's source, the jax / jaxlib / flax / optax versions,
XLA_FLAGS, the caller's description of the step (config, stage, data sizes) and the argument
shapes, dtypes and shardings. A file that cannot be read or does not match is traced again and
rewritten (files are written whole, under a temporary name, then renamed), so a damaged cache
costs one trace and never a wrong program. Every process computes the same artifact, so
processes of one multi-host run always compile the same program.

An artifact is stored only after its step compiled and the caller accepted it (it fits the
device), so its presence (`is_stored`) tells a restart that the step is known good: the
training loop then defers it with `LazySteps` until its stage begins instead of loading it at
start-up (XLA:CPU takes ~4 s to load each V2-S executable, which is most of a warm restart).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path

import jax
from absl import logging
from etils import epath

from effnetv2_jax import cpu

_FORMAT = 1  # bump when the file layout changes


@functools.cache
def _source_digest() -> str:
    """sha256 over the package's Python and C++ sources (any code change re-traces)."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.cc")]):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _versions() -> dict:
    import flax
    import jaxlib
    import optax
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "cpu_kernels": cpu.kernels_enabled(), "format": _FORMAT}


def _describe_leaf(leaf) -> str:
    sharding = getattr(leaf, "sharding", None)
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    return (f"{tuple(leaf.shape)}:{leaf.dtype}:{spec}:"
            f"{dict(mesh.shape) if mesh is not None else None}")


def _devices(args) -> list:
    """The devices the arguments are sharded over (the program's target, which need not be
    this host's: a TPU slice described on a CPU host), in a stable order."""
    for leaf in jax.tree.leaves(args):
        if getattr(leaf, "sharding", None) is not None:
            return sorted(leaf.sharding.device_set, key=lambda d: d.id)
    return jax.devices()


def step_key(name: str, description: dict, args) -> str:
    """Hex key of a step: `description` (JSON-able) must name everything the step's Python
    closure depends on that the sources and the argument shapes do not."""
    devices = _devices(args)
    payload = {"name": name, "description": description, "versions": _versions(),
               "source": _source_digest(),
               "process_count": len({d.process_index for d in devices}),
               "devices": [len(devices), devices[0].platform, devices[0].device_kind],
               "args": [_describe_leaf(leaf) for leaf in jax.tree.leaves(args)],
               "tree": str(jax.tree.structure(args))}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class CompiledStep:
    """A compiled step called like the original: `step(*args) -> outputs` (pytrees)."""

    def __init__(self, compiled, in_tree, out_tree):
        self._compiled, self._in_tree, self._out_tree = compiled, in_tree, out_tree

    def __call__(self, *args):
        leaves, tree = jax.tree.flatten(args)
        if tree != self._in_tree:
            raise TypeError(f"step called with {tree}, compiled for {self._in_tree}")
        return jax.tree.unflatten(self._out_tree, self._compiled(*leaves))

    def memory_analysis(self):
        return self._compiled.memory_analysis()

    def cost_analysis(self) -> dict:
        """XLA's per-device estimate: "flops", "bytes accessed", ..."""
        analysis = self._compiled.cost_analysis()
        return (analysis[0] if isinstance(analysis, list) else analysis) or {}

    def as_text(self) -> str:
        """The optimised HLO of the compiled program."""
        return self._compiled.as_text()


def _artifact_path(name: str, description: dict, args, cache_dir: str) -> epath.Path:
    return epath.Path(cache_dir) / "exported" / f"{name}-{step_key(name, description, args)}.jexp"


def is_stored(name: str, description: dict, args, cache_dir: str | None) -> bool:
    """Whether `compile_step` (same arguments) stored this step before: it then compiled and
    was accepted (a damaged file still counts; `compile_step` traces it again)."""
    return bool(cache_dir) and _artifact_path(name, description, args, cache_dir).exists()


def compile_step(fn, args: tuple, *, name: str, description: dict, out_sharding,
                 donate_first: bool, cache_dir: str | None,
                 accept: Callable[[CompiledStep], None] | None = None
                 ) -> tuple[CompiledStep, bool]:
    """`jax.jit(fn)` compiled for `args`, through an exported artifact in `cache_dir`.

    Args:
      fn: the step, `fn(*args) -> outputs`.
      args: abstract arguments (`jax.ShapeDtypeStruct`s with their shardings).
      name: a file-name-safe name ("train_171px", "eval").
      description: JSON-able facts the traced program depends on (see `step_key`).
      out_sharding: one sharding for every output.
      donate_first: donate the first argument's buffers (the train state).
      cache_dir: folder of the artifacts; None traces every time (no file is read or written).
      accept: called with the compiled step before its artifact is stored; raises to refuse
        it (e.g. it does not fit the device), so that a stored artifact means a good step.
    Returns:
      (the compiled step, whether it came from a stored artifact).
    """
    leaves, in_tree = jax.tree.flatten(args)
    in_shardings = [leaf.sharding for leaf in leaves]
    donate = tuple(range(len(jax.tree.leaves(args[0])))) if donate_first else ()
    path = _artifact_path(name, description, args, cache_dir) if cache_dir else None
    exported, out_tree, from_file = _load(path, in_tree) if path else (None, None, False)
    if exported is None:
        trees = {}

        def flat(*flat_args):
            outputs = fn(*jax.tree.unflatten(in_tree, flat_args))
            out_leaves, trees["out"] = jax.tree.flatten(outputs)
            return out_leaves

        # Exported for the platform of the devices the step runs on, which need not be the
        # host's (compiling for a TPU slice from a CPU machine); only a CPU program may hold
        # the project's XLA:CPU kernels, which jax.export must be told are safe.
        platform = _devices(args)[0].platform
        exported = jax.export.export(
            jax.jit(flat, in_shardings=in_shardings, out_shardings=out_sharding),
            platforms=(platform,),
            disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(target)
                             for target in cpu.kernel_targets()] if platform == "cpu" else ()
        )(*leaves)
        out_tree = trees["out"]
    compiled = jax.jit(exported.call, in_shardings=in_shardings, out_shardings=out_sharding,
                       donate_argnums=donate).lower(*leaves).compile()
    step = CompiledStep(compiled, in_tree, out_tree)
    if accept is not None:
        accept(step)
    if path is not None and not from_file:
        _store(path, exported, in_tree, out_tree)
    return step, from_file


class LazySteps(Mapping):
    """Compiled steps by key, each compiled by its own function at the first lookup, or at once
    when added with `now=True`. Which were compiled so far: `compiled_keys()`."""

    def __init__(self):
        self._compile: dict[Hashable, Callable[[], CompiledStep]] = {}
        self._compiled: dict[Hashable, CompiledStep] = {}

    def add(self, key: Hashable, compile_fn: Callable[[], CompiledStep], *, now: bool) -> None:
        if key in self._compile:
            raise KeyError(f"step {key!r} was added already")
        self._compile[key] = compile_fn
        if now:
            self[key]  # noqa: B018 - compiles it

    def __getitem__(self, key: Hashable) -> CompiledStep:
        if key not in self._compiled:
            self._compiled[key] = self._compile[key]()
        return self._compiled[key]

    def __iter__(self):
        return iter(self._compile)

    def __len__(self) -> int:
        return len(self._compile)

    def compiled_keys(self) -> list:
        return list(self._compiled)


def _load(path: epath.Path, in_tree):
    """(exported, out_tree, True) from `path`, or (None, None, False) when it is missing,
    unreadable or for other arguments."""
    try:
        if not path.exists():
            return None, None, False
        stored = pickle.loads(path.read_bytes())
        if stored["in_tree"] != in_tree:
            raise ValueError("argument structure differs")
        return jax.export.deserialize(stored["exported"]), stored["out_tree"], True
    except Exception as error:  # noqa: BLE001 - any damage means: trace again
        logging.warning("ignoring the exported step %s (%s: %s); tracing it again", path,
                        type(error).__name__, error)
        return None, None, False


def _store(path: epath.Path, exported, in_tree, out_tree) -> None:
    blob = pickle.dumps({"exported": exported.serialize(), "in_tree": in_tree,
                         "out_tree": out_tree})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f"{path.name}.{jax.process_index()}.{os.getpid()}.tmp"
        temporary.write_bytes(blob)
        temporary.replace(path)  # over a damaged file, if any
    except OSError as error:  # a read-only or full cache only costs the next restart a trace
        logging.warning("could not store the exported step %s: %s", path, error)
