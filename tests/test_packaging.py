"""Packaging: the version is written once, and the licence and the type marker ship with the package."""

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import jaxmicro

PACKAGE = Path(jaxmicro.__file__).parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"


@pytest.fixture(scope="module")
def pyproject():
    if not PYPROJECT.exists():
        pytest.skip("not a checkout")
    return tomllib.loads(PYPROJECT.read_text())


def test_version_is_written_once(pyproject):
    project = pyproject["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jaxmicro.__version__"}
    try:
        installed = importlib.metadata.version("jaxmicro")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("jaxmicro is not installed")
    assert installed == jaxmicro.__version__, "the installed metadata is stale: reinstall (pip install -e .)"


def test_licence_and_type_marker_ship(pyproject):
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert pyproject["project"]["license-files"] == ["LICENSE"]
    assert (PYPROJECT.parent / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["jaxmicro"]
    assert (PACKAGE / "py.typed").exists()


def test_public_names_are_all_exported():
    assert sorted(jaxmicro.__all__) == sorted(set(jaxmicro.__all__))
    assert all(hasattr(jaxmicro, name) for name in jaxmicro.__all__)
