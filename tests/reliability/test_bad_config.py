"""Bad configs and block strings: every bad command-line override fails before anything is
compiled, with a message naming the value, and never from deep inside JAX or TF."""

import traceback

import pytest
from config_parsing import parse_command_line

import harness
from effnetv2_jax.train import loop

DEEP = ("/jax/", "/jaxlib/", "/tensorflow/", "/flax/", "/optax/", "/orbax/")


def parse(*overrides):
    """The tiny config as `python -m effnetv2_jax.main --config=tests/configs/tiny.py ...`
    builds it."""
    return parse_command_line(f"--config={harness.REPO / harness.TINY}", *overrides)


@pytest.mark.parametrize("override, named", harness.BAD_OVERRIDES)
def test_bad_override_fails_early_naming_the_value(override, named, tmp_path, monkeypatch):
    # The training entry point, with compilation recorded instead of run: a bad value must stop
    # it before the first compile.
    compiled = []
    monkeypatch.setattr(loop, "compile_train_steps", lambda run, *args: compiled.append(run))
    with pytest.raises(Exception) as error:  # noqa: PT011 - the type varies; the text matters
        loop.train_and_evaluate(parse(override, "--config.checkpoint.compile_cache_dir=none"),
                                str(tmp_path))
    assert not compiled
    message = str(error.value)
    assert named in message, f"{override}: {type(error.value).__name__}: {message}"
    innermost = traceback.extract_tb(error.value.__traceback__)[-1].filename
    assert not any(part in innermost for part in DEEP), f"{override}: raised in {innermost}"
