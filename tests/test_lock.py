"""The locks (``requirements/*.txt``, written by ``make lock``) that CI and the images install from with hashes
required: each agrees with pyproject.toml's ranges, pins every package it names with its hashes, and all three pin
one version of each package. The ranges stay in pyproject.toml for people who install the package themselves."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def locked(name: str) -> dict[str, Version]:
    """The lock's pins that apply to this interpreter and platform (universal locks hold markers), each checked to
    carry at least one sha256."""
    pins: dict[str, Version] = {}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements" / f"{name}.txt").read_text())
    for block in blocks:
        if block.startswith("#"):
            continue
        first, *rest = block.splitlines()
        found = ENTRY.match(first)
        assert found, f"requirements/{name}.txt: {first!r} is not pinned with =="
        assert any(line.strip().startswith("--hash=sha256:") for line in rest), f"{first}: no hash"
        package, version, marker = found.groups()
        if marker is None or Marker(marker).evaluate():
            pins[canonicalize_name(package)] = Version(version)
    return pins


def required(extras: list[str], with_dependencies: bool = True) -> list[Requirement]:
    """pyproject's requirements for an install: the dependencies (or not) and these extras, this package's own
    self-references (``stackserve[ray]``) opened up."""
    lines = list(PROJECT["dependencies"]) if with_dependencies else []
    for extra in extras:
        for line in EXTRAS[extra]:
            requirement = Requirement(line)
            if requirement.name == PROJECT["name"]:
                lines += [item for inner in requirement.extras for item in EXTRAS[inner]]
            else:
                lines.append(line)
    return [Requirement(line) for line in lines]


FLAVOURS = {"test": required(["test"]), "full": required([]), "serve": required(["serve"], with_dependencies=False)}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_each_lock_pins_what_pyproject_asks_within_its_ranges(flavour):
    pins = locked(flavour)
    for requirement in FLAVOURS[flavour]:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements/{flavour}.txt lacks {requirement}: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{flavour}.txt pins {name}=={pins[name]}, outside pyproject's {requirement}: run make lock"
        )


def test_the_three_locks_pin_one_version_of_each_package():
    test = locked("test")
    for flavour in ("full", "serve"):
        for name, version in locked(flavour).items():
            assert test.get(name) == version, f"{name}: {flavour}.txt pins {version}, test.txt {test.get(name)}"
    serve = locked("serve")
    assert not {"tensorflow", "keras", "pandas", "matplotlib"} & set(serve)  # the slim image stays slim


def test_this_environment_was_installed_from_the_lock():
    """make install (and so CI) installs requirements/test.txt with hashes required: what runs is what is locked."""
    for name, version in locked("test").items():
        assert Version(metadata.version(name)) == version, (
            f"{name} {metadata.version(name)} is installed, {version} locked"
        )
