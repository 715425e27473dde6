"""Configs parsed exactly as `python -m effnetv2_jax.main` parses them, for the tests."""

from absl import flags
from ml_collections import config_flags


def parse_command_line(*args: str):
    """`--config=FILE[:ARG]` and its `--config.key=value` overrides, parsed as
    effnetv2_jax.main does (ml_collections' file parser, lock_config=True)."""
    argv = ["prog", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config
