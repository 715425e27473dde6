"""Imports of optional dependencies: a missing one names the extra that installs it.

    tf = require("tensorflow", "data")
    # -> MissingExtraError: effnetv2_jax.data needs tensorflow, which is not installed:
    #    pip install 'effnetv2_jax[data]'

The core install (`pip install effnetv2_jax`) holds the models, counting and `load_checkpoint`;
training input pipelines, converters, plots and the quickstart's digits are extras (setup.py).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

# extra -> the top-level modules it installs (import names, not distribution names).
EXTRA_MODULES = {
    "data": ("tensorflow", "tensorflow_datasets", "tensorboard", "importlib_resources"),
    "quickstart": ("sklearn",),
    "plots": ("matplotlib",),
    "notebooks": ("skimage", "nbclient", "nbformat", "matplotlib"),
    "convert": ("torch", "timm", "safetensors", "keras", "h5py"),
    "cpu": ("cmeel_mimalloc",),
    "onnx": ("jax2onnx", "onnx", "onnxruntime"),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message gives the pip command for its extra.

    A ModuleNotFoundError (so an ImportError) whose `name` is the missing module and `extra`
    the extra that installs it.
    """

    def __init__(self, module: str, extra: str, needed_by: str | None = None):
        self.extra = extra
        who = needed_by or "this part of effnetv2_jax"
        super().__init__(f"{who} needs {module}, which is not installed: "
                         f"pip install 'effnetv2_jax[{extra}]'", name=module)


def require(module: str, extra: str, needed_by: str | None = None) -> ModuleType:
    """Imports `module` (e.g. "tensorflow", "clu.metric_writers") and returns it.

    Args:
      module: the module to import.
      extra: the setup.py extra that installs it ("data", "convert", ...).
      needed_by: who needs it, for the message (default: the calling module's name).
    Raises:
      MissingExtraError: `module`, or a module of `extra` that it imports, is not installed.
      ValueError: `extra` is not one of EXTRA_MODULES.
    """
    if extra not in EXTRA_MODULES:
        raise ValueError(f"unknown extra {extra!r} (valid: {', '.join(EXTRA_MODULES)})")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = (e.name or "").partition(".")[0]
        if missing != module.partition(".")[0] and missing not in EXTRA_MODULES[extra]:
            raise  # a different package is missing: not this extra's to name
        if needed_by is None:
            needed_by = sys._getframe(1).f_globals.get("__name__")
        raise MissingExtraError(missing or module, extra, needed_by) from e


def lazy_exports(package: str, exports: dict[str, str]):
    """PEP 562 `__getattr__` and `__dir__` for a package whose names live in submodules that
    need an extra: `import effnetv2_jax.train` then imports none of them (nor TensorFlow), and
    `effnetv2_jax.train.train_and_evaluate` imports `loop` on first use.

    Args:
      package: the package's `__name__`.
      exports: public name -> the submodule (relative to `package`) that defines it.
    Returns:
      (`__getattr__`, `__dir__`) to assign at the package's top level.
    """
    module_globals = sys.modules[package].__dict__

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        module_globals[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(module_globals) | set(exports))

    return __getattr__, __dir__
