"""setup.py's ranges and requirements/lock.txt agree: every requirement of the core and of every
extra is pinned in the lock at a version its range admits, setup.py pins nothing exactly, and
the lock says how to regenerate it."""

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"


def _lock() -> dict[str, list[str]]:
    """name -> the versions the lock pins (one per marker branch)."""
    pins: dict[str, list[str]] = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            pins.setdefault(canonicalize_name(match[1]), []).append(match[2])
    return pins


def _requirements() -> list[Requirement]:
    """The installed package's requirements, core and every extra's (from setup.py)."""
    return [Requirement(r) for r in importlib.metadata.requires("effnetv2_jax") or []]


def test_every_requirement_is_locked_within_its_range():
    pins = _lock()
    requirements = _requirements()
    assert len(requirements) > 20
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {LOCK.name}"
        assert any(requirement.specifier.contains(v, prereleases=True) for v in pins[name]), \
            f"{LOCK.name} pins {name} at {pins[name]}, outside {requirement}"


def test_setup_py_has_ranges_not_pins():
    for requirement in _requirements():
        assert not any(s.operator in ("==", "===") for s in requirement.specifier), requirement


def test_the_lock_holds_todays_tested_versions_and_its_command():
    pins = _lock()
    for name, version in (("jax", "0.10.2"), ("jaxlib", "0.10.2"), ("flax", "0.12.8"),
                          ("orbax-checkpoint", "0.12.8"), ("numpy", "2.4.6"),
                          ("tensorflow-cpu", "2.21.0"), ("torch", "2.14.1")):
        assert pins[name] == [version], (name, pins[name])
    assert "uv pip compile setup.py --all-extras --universal" in LOCK.read_text()[:400]
