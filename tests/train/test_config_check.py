"""Unknown config keys, at any depth, in an override flag or in a recipe file: one line naming the
full dotted key and the closest valid ones (train/config_check.py), exit code 2, nothing built."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from effnetv2_jax.train import config_check
from effnetv2_jax.train.config import base_config

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = str(REPO_ROOT / "tests/configs/tiny.py")


@pytest.mark.parametrize("key, message", [
    # The "done when": the misspelt batch key names the real one.
    ("train.batchsize",
     "unknown config key 'train.batchsize'; did you mean 'train.global_batch_size'?"),
    ("sead", "unknown config key 'sead'; did you mean 'seed'?"),                      # depth 1
    ("trian.num_steps", "unknown config key 'trian.num_steps'; did you mean "
                        "'train.num_steps'?"),                                       # the rest kept
    ("train.optimiser.beta", "unknown config key 'train.optimiser.beta'; did you mean "
                             "'train.optimizer'?"),                                  # depth 3
    ("train.dtype", "unknown config key 'train.dtype'; did you mean 'model.dtype'?"),  # other section
    ("train.base_lr.x", "unknown config key 'train.base_lr.x'; did you mean 'train.base_lr'?"),
    ("preprocess.qqq", "unknown config key 'preprocess.qqq'; valid keys in 'preprocess': "
                       "crop_padding"),
])
def test_unknown_key_names_the_full_key_and_the_closest(key, message):
    error = config_check.find_unknown(base_config(), key)
    assert str(error) == message
    assert error.key == key
    with pytest.raises(config_check.UnknownKeyError, match="unknown config key"):
        config_check.check_key(base_config(), key)


@pytest.mark.parametrize("key", ["seed", "train", "train.global_batch_size", "model.dtype",
                                 "progressive.image_size"])
def test_known_keys_pass(key):
    assert config_check.find_unknown(base_config(), key) is None
    config_check.check_key(base_config(), key)


RECIPES = {  # recipe body -> the key it gets wrong
    "c.train.batchsize = 8": "train.batchsize",                 # sets, depth 2
    "c.sead = 1": "sead",                                       # sets, depth 1
    "c.train.warmup_epochs = c.train.warmup_epoch": "train.warmup_epoch",   # reads
    "c.progressive['image_sizes'] = (32, 40)": "progressive.image_sizes",   # item syntax
    # A helper holding only a sub-config: its path comes from the caller's config.
    "helper(c.progressive)": "progressive.num_stage",
}


def write_recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "recipe.py"
    path.write_text(textwrap.dedent(f"""\
        from effnetv2_jax.train.config import base_config

        def helper(p):
            p.num_stage = 1

        def get_config(arg=None):
            c = base_config()
            {body}
            return c
        """))
    return path


@pytest.mark.parametrize("body, key", RECIPES.items())
def test_a_recipe_with_an_unknown_key(tmp_path, body, key):
    path = write_recipe(tmp_path, body)
    with pytest.raises(config_check.UnknownKeyError) as info:
        config_check.load_config(str(path))
    assert info.value.key == key
    assert info.value.suggestions, str(info.value)
    assert config_check.diagnose(["prog", f"--config={path}"]).key == key


def test_diagnose_finds_overrides_in_every_flag_form():
    argv = ["prog", "--config", TINY, "--config.train.num_steps=2", "--noconfig.model.remat",
            "--config.model.dtpye", "bfloat16"]
    assert config_check.override_keys(argv) == ["train.num_steps", "model.remat", "model.dtpye"]
    assert config_check.diagnose(argv).suggestions == ("model.dtype",)
    assert config_check.diagnose(argv[:5]) is None           # every key known
    assert config_check.diagnose(["prog", "--config.x=1"]) is None   # no config: not ours


def test_every_shipped_recipe_loads():
    for path in sorted((REPO_ROOT / "configs").glob("*_imagenet.py")) + [Path(TINY)]:
        assert config_check.diagnose(["prog", f"--config={path}"]) is None, path


def run_main(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EFFNETV2_JAX_ALLOCATOR": "system"}   # no restart: a faster start
    return subprocess.run([sys.executable, "-m", "effnetv2_jax.main", *args,
                           f"--workdir={tmp_path / 'workdir'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("case", ["override depth 2", "override depth 3", "override depth 1",
                                  "recipe depth 2"])
def test_command_line_says_it_in_one_line(tmp_path, case):
    args, line = {
        "override depth 2": (
            [f"--config={TINY}", "--config.train.batchsize=8"],
            "unknown config key 'train.batchsize'; did you mean 'train.global_batch_size'?"),
        "override depth 3": (
            [f"--config={TINY}", "--config.train.optimiser.beta=0.9"],
            "unknown config key 'train.optimiser.beta'; did you mean 'train.optimizer'?"),
        "override depth 1": (
            [f"--config={TINY}", "--config.sead=1"],
            "unknown config key 'sead'; did you mean 'seed'?"),
        "recipe depth 2": (
            [f"--config={write_recipe(tmp_path, 'c.train.batchsize = 8')}:code"],
            "unknown config key 'train.batchsize'; did you mean 'train.global_batch_size'?"),
    }[case]
    result = run_main(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"effnetv2_jax.main: {line}"]
    assert not (tmp_path / "workdir").exists()


def test_other_flag_errors_are_still_absl_s(tmp_path):
    """A value of the wrong type is not an unknown key: absl's own message and exit code."""
    result = run_main(tmp_path, f"--config={TINY}", "--config.train.num_steps=abc")
    assert result.returncode == 1
    assert "invalid literal for int()" in result.stderr and "unknown config key" not in \
        result.stderr


@pytest.mark.parametrize("module, config_flag", [("effnetv2_jax.nas", "config"),
                                                 ("effnetv2_jax.scaling", "base")])
def test_search_and_scaling_commands_say_it_in_one_line_too(tmp_path, module, config_flag):
    """The other commands that take a config file report a misspelt key the same way."""
    env = {**os.environ, "EFFNETV2_JAX_ALLOCATOR": "system"}
    result = subprocess.run([sys.executable, "-m", module, f"--{config_flag}={TINY}",
                             f"--{config_flag}.train.batchsize=8",
                             f"--workdir={tmp_path / 'workdir'}"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"{module}: unknown config key 'train.batchsize'; did you mean "
        "'train.global_batch_size'?"]
    assert not (tmp_path / "workdir").exists()
