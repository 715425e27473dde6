"""Unknown config keys reported in one line: the full dotted key and the closest valid ones.

A config is locked (`config.base_config`), so a misspelt key fails wherever it is used: in a
`--config.train.batchsize=8` override, or in a recipe's `get_config` that sets or reads
`c.train.batchsize`. ml_collections reports either as an `AttributeError: "'batchsize'"` at the
end of a long traceback from inside absl's flag parsing, naming neither the section nor what
was meant. `parse_flags` (the entry point's flag parser) turns it into

    effnetv2_jax.main: unknown config key 'train.batchsize'; did you mean 'train.global_batch_size'?

and exit code 2, before anything is built.

Why diagnose after the failure instead of checking argv first: ml_collections loads the config
file while absl parses flags, and the overrides can only be checked against the loaded config.
Re-loading the file when parsing fails (`diagnose`) keeps the normal path exactly
ml_collections' own, and depends only on its public parser and on ConfigDict raising from its
attribute methods, not on its internals' local names or message texts.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import types
from collections.abc import Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

# ConfigDict methods whose second argument is the key being read or written.
_KEY_METHODS = ("__getattr__", "__setattr__", "__getitem__", "__setitem__", "__delattr__",
                "__delitem__")


class UnknownKeyError(ValueError):
    """A config key that is not in the config: `key` (dotted), `suggestions` (dotted)."""

    def __init__(self, key: str, suggestions: Sequence[str], valid: Sequence[str] = ()):
        self.key = key
        self.suggestions = tuple(suggestions)
        self.valid = tuple(valid)
        super().__init__(self._message())

    def _message(self) -> str:
        message = f"unknown config key {self.key!r}"
        if self.suggestions:
            quoted = [repr(s) for s in self.suggestions]
            alternatives = (quoted[0] if len(quoted) == 1
                            else f"{', '.join(quoted[:-1])} or {quoted[-1]}")
            return f"{message}; did you mean {alternatives}?"
        section = self.key.rpartition(".")[0]
        where = f"in {section!r}" if section else "at the top level"
        return f"{message}; valid keys {where}: {', '.join(self.valid)}"


def dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every key of `config`, sections and values, dotted: ["data", "data.cache", ...]."""
    keys = []
    for key in config.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(dotted_keys(value, f"{path}."))
    return keys


def find_unknown(config: ml_collections.ConfigDict, key: str) -> UnknownKeyError | None:
    """The error for dotted `key` if some part of it is not in `config` (else None).

    Suggestions, best first: keys of the same section close to the first missing part (with
    the rest of `key` kept where that exists: 'trian.seed' -> 'train.seed'); failing those,
    keys anywhere whose last part is close to `key`'s ('train.dtype' -> 'model.dtype')."""
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts):
        if isinstance(node, ml_collections.ConfigDict) and part in node:
            node = node[part]
            continue
        parent = ".".join(parts[:depth])
        prefix = f"{parent}." if parent else ""
        if not isinstance(node, ml_collections.ConfigDict):  # 'train.base_lr.x'
            return UnknownKeyError(key, [parent])
        siblings = list(node.keys())
        suggestions = []
        for match in difflib.get_close_matches(part, siblings, n=3, cutoff=0.6):
            fixed = ".".join([*parts[:depth], match, *parts[depth + 1:]])
            suggestions.append(fixed if find_unknown(config, fixed) is None
                               else f"{prefix}{match}")
        if not suggestions:
            everywhere = dotted_keys(config)
            by_last = {}
            for candidate in everywhere:
                by_last.setdefault(candidate.rpartition(".")[2], []).append(candidate)
            for match in difflib.get_close_matches(parts[-1], list(by_last), n=3, cutoff=0.8):
                suggestions.extend(by_last[match])
            suggestions = suggestions[:3]
        return UnknownKeyError(key, suggestions, siblings)
    return None


def check_key(config: ml_collections.ConfigDict, key: str) -> None:
    """Raises UnknownKeyError if dotted `key` is not in `config`."""
    error = find_unknown(config, key)
    if error is not None:
        raise error


def from_exception(error: BaseException) -> UnknownKeyError | None:
    """The unknown key behind an AttributeError/KeyError that a locked ConfigDict raised (a
    recipe setting or reading a key the config lacks), with its full dotted path, or None.

    The innermost ConfigDict method in the traceback names the sub-config and the key; the
    path of that sub-config comes from a ConfigDict held by an outer frame (the recipe's
    `config`) that contains it."""
    if not isinstance(error, (AttributeError, KeyError)):
        return None
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        code = frame.f_code
        if code.co_name not in _KEY_METHODS or code.co_argcount < 2:
            continue
        sub = frame.f_locals.get(code.co_varnames[0])
        name = frame.f_locals.get(code.co_varnames[1])
        if not isinstance(sub, ml_collections.ConfigDict) or not isinstance(name, str):
            continue
        if name in sub:  # the key exists: some other failure
            return None
        root, path = sub, ""
        for outer in frames[:index]:
            for value in list(outer.f_locals.values()):
                found = _path_to(value, sub)
                if found is not None and len(found) > len(path):
                    root, path = value, found
        return find_unknown(root, f"{path}.{name}" if path else name)
    return None


def _path_to(root, target, prefix: str = "") -> str | None:
    """The dotted path of `target` (by identity) inside `root`, "" for root itself, or None."""
    if not isinstance(root, ml_collections.ConfigDict):
        return None
    if root is target:
        return prefix.rstrip(".")
    for key in root.keys():
        found = _path_to(root[key], target, f"{prefix}{key}.")
        if found is not None:
            return found
    return None


def load_config(spec: str, name: str = "config") -> ml_collections.ConfigDict:
    """`FILE[:ARG]` loaded as `--config=FILE[:ARG]` loads it (ml_collections' parser, locked);
    an unknown key in the recipe raises UnknownKeyError."""
    argv = ["load_config", f"--{name}={spec}"]  # no overrides: those are checked separately
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(name, flag_values=values, lock_config=True, sys_argv=argv)
    try:
        values(argv)
        return values[name].value
    except (AttributeError, KeyError) as error:
        unknown = from_exception(error)
        if unknown is None:
            raise
        raise unknown from error


def override_keys(argv: Sequence[str], name: str = "config") -> list[str]:
    """The dotted keys of `--config.KEY=VALUE` (and `--config.KEY VALUE`, `--noconfig.KEY`)."""
    pattern = re.compile(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)")
    return [m.group(1) for m in map(pattern.match, argv) if m]


def _config_spec(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if re.match(rf"^--?{re.escape(name)}=", arg):
            return arg.split("=", 1)[1]
        if re.match(rf"^--?{re.escape(name)}$", arg) and i + 1 < len(argv):
            return argv[i + 1]
    return None


def diagnose(argv: Sequence[str], name: str = "config") -> UnknownKeyError | None:
    """The first unknown key in the command line `argv`: in the config file it names, or in its
    `--config.KEY` overrides; None if every key is known (or the file cannot be loaded)."""
    try:
        argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
    except flags.Error:
        return None
    spec = _config_spec(argv, name)
    if not spec:
        return None
    try:
        config = load_config(spec, name)
    except UnknownKeyError as error:
        return error
    except Exception:  # noqa: BLE001  (not ours to explain: the original error is raised)
        return None
    if not isinstance(config, ml_collections.ConfigDict):
        return None
    for key in override_keys(argv, name):
        error = find_unknown(config, key)
        if error is not None:
            return error
    return None


def parse_flags(argv: list[str], name: str = "config",
                prog: str | None = None) -> list[str]:
    """absl's flag parsing (`app.run(main, flags_parser=parse_flags)`), except that an unknown
    config key exits with one line on stderr, `PROG: unknown config key ...`, and code 2."""
    try:
        return app.parse_flags_with_usage(argv)
    except Exception as error:
        # argv first: it has the key as typed ('train.optimiser.x', not just 'train.optimiser')
        unknown = diagnose(argv, name) or from_exception(error)
        if unknown is None:
            raise
        prog = prog or _program(argv)
        print(f"{prog}: {unknown}", file=sys.stderr)
        sys.exit(2)


def _program(argv: Sequence[str]) -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None) if isinstance(main, types.ModuleType) else None
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    return os.path.basename(argv[0]) if argv else "effnetv2_jax"   # a console script
