"""The core install works without its extras, and a missing extra is named in the error.

A subprocess blocks every extra's modules (`sys.modules[name] = None`, as if not installed) and
then builds, saves and loads a model; the data pipeline, training and the converters' torch path
must then fail with the pip command of their extra.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from effnetv2_jax import _extras

BLOCKED = ("tensorflow", "tensorflow_datasets", "tensorboard", "torch", "torchvision", "timm",
           "keras", "sklearn", "skimage", "matplotlib", "cmeel_mimalloc")

SCRIPT = textwrap.dedent("""\
    import json, sys
    blocked, workdir = json.loads(sys.argv[1]), sys.argv[2]
    for name in blocked:
        sys.modules[name] = None          # "import name" now raises ModuleNotFoundError

    import numpy as np
    import effnetv2_jax
    import effnetv2_jax.data, effnetv2_jax.train, effnetv2_jax.convert, effnetv2_jax.export
    from effnetv2_jax.convert.writer import write_model

    tiny = {"block_strings": ["r1_k3_s1_e1_i8_o8_c1", "r1_k3_s2_e4_i8_o16_se0.25"],
            "feature_size": 32}
    model = effnetv2_jax.create_model("efficientnetv2-b0", num_classes=10, **tiny)
    write_model(model, workdir, model_name="efficientnetv2-b0", source="test",
                model_overrides=tiny)
    loaded = effnetv2_jax.load_checkpoint(workdir)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    result = {"max_diff": float(np.abs(np.asarray(loaded(images)) - np.asarray(model(images))).max()),
              "preprocess_size": loaded.eval_size,
              "still_blocked": all(sys.modules[name] is None for name in blocked),
              "errors": {}}

    def error_of(what, thunk):
        try:
            thunk()
        except ImportError as e:
            result["errors"][what] = [type(e).__name__, str(e)]

    import importlib
    error_of("data.pipeline", lambda: importlib.import_module("effnetv2_jax.data.pipeline"))
    error_of("train_and_evaluate", lambda: effnetv2_jax.train.train_and_evaluate)
    error_of("digits", lambda: importlib.import_module("effnetv2_jax.data.digits_builder"))
    from effnetv2_jax.convert import timm as timm_convert
    open(workdir + "/w.pth", "wb").close()
    error_of("pth", lambda: timm_convert.load_state_dict(workdir + "/w.pth"))
    print("RESULT " + json.dumps(result))
    """)


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("no_extras")
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), str(workdir)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_NUM_CPU_DEVICES": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_models_and_checkpoints_work_without_any_extra(without_extras):
    assert without_extras["still_blocked"]        # nothing fell back to a real import
    assert without_extras["max_diff"] < 1e-5      # the loaded weights are the saved ones
    assert without_extras["preprocess_size"] > 0


@pytest.mark.parametrize("what, extra", [("data.pipeline", "data"),
                                         ("train_and_evaluate", "data"),
                                         ("digits", "data"), ("pth", "convert")])
def test_a_missing_extra_is_named(without_extras, what, extra):
    kind, message = without_extras["errors"][what]
    assert kind == "MissingExtraError"
    assert f"pip install 'effnetv2_jax[{extra}]'" in message


def test_require_returns_the_module():
    assert _extras.require("json", "data") is json


def test_require_names_the_extra_of_a_missing_module(monkeypatch):
    # Both names: another test in this process may have imported the real sklearn.datasets.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'effnetv2_jax\[quickstart\]'") as info:
        _extras.require("sklearn.datasets", "quickstart", "the digits dataset")
    assert isinstance(info.value, ModuleNotFoundError) and info.value.name == "sklearn"
    assert info.value.extra == "quickstart"
    assert str(info.value).startswith("the digits dataset needs sklearn")


def test_require_leaves_other_missing_modules_alone(tmp_path, monkeypatch):
    # A module of the extra that is present but lacks a dependency the extra does not install
    # keeps its own error rather than a misleading pip command.
    (tmp_path / "present_module.py").write_text("import absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        _extras.require("present_module", "data")
    assert not isinstance(info.value, _extras.MissingExtraError)
    assert info.value.name == "absent_dependency"


def test_require_rejects_an_unknown_extra():
    with pytest.raises(ValueError, match="unknown extra 'datta'"):
        _extras.require("json", "datta")


def test_every_extra_named_in_the_code_is_one_setup_py_declares():
    setup_py = open(os.path.join(os.path.dirname(__file__), "..", "setup.py")).read()
    for extra in _extras.EXTRA_MODULES:
        assert f'"{extra}":' in setup_py, extra
