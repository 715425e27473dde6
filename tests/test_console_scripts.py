"""One CLI convention: every tool is `python -m effnetv2_jax.<tool>`, and setup.py's console
script of the same tool (`effnetv2-<name>`) points at the function that command runs.

Read from the source (ast), not imported: `main` and `nas` define absl flags of the same names,
so importing both into one process would fail.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "effnetv2_jax"


def console_scripts() -> dict[str, str]:
    """setup.py's CONSOLE_SCRIPTS: name -> "module:function"."""
    tree = ast.parse((REPO / "setup.py").read_text())
    (value,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", "") == "CONSOLE_SCRIPTS" for t in node.targets)]
    entries = [ast.literal_eval(e) for e in value.elts]
    return dict((part.strip() for part in entry.split("=", 1)) for entry in entries)


def runnable_modules() -> set[str]:
    """Every module of the package that does something when run with `python -m`."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if '__name__ == "__main__"' in path.read_text() or path.name == "predict.py":
            found.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


def functions_of(module: str) -> set[str]:
    path = REPO / Path(*module.split(".")).with_suffix(".py")
    return {node.name for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef)}


def test_every_console_script_names_a_function_of_a_tool():
    scripts = console_scripts()
    assert set(scripts) >= {"effnetv2-train", "effnetv2-predict", "effnetv2-convert",
                            "effnetv2-export", "effnetv2-nas", "effnetv2-scaling"}
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert name.startswith("effnetv2-") and module.startswith("effnetv2_jax."), name
        assert function in functions_of(module), f"{name}: no {function}() in {module}"


def test_every_python_m_tool_has_its_console_script():
    """A module runnable with `-m` is a tool: its console script runs its code (predict's is
    predict_cli: `effnetv2_jax.predict` is also the package's function, see predict.py)."""
    targets = {target.partition(":")[0] for target in console_scripts().values()}
    for module in runnable_modules():
        code_module = "effnetv2_jax.predict_cli" if module == "effnetv2_jax.predict" else module
        assert code_module in targets, f"python -m {module.removesuffix('.__main__')} has no " \
                                       f"console script in setup.py"


@pytest.mark.parametrize("tool", ["main", "predict", "describe", "convert", "export", "nas",
                                  "scaling"])
def test_every_tool_answers_help(tool):
    run = subprocess.run([sys.executable, "-m", f"effnetv2_jax.{tool}", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "EFFNETV2_JAX_ALLOCATOR": "system"})
    # absl's --help (main, nas) exits 1 after printing the flags; argparse's exits 0
    assert run.returncode in (0, 1) and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "usage" in run.stdout.lower() or "flags:" in run.stdout, run.stdout[:500]
