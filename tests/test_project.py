"""Packaging and documentation checks."""
import doctest
import pathlib
import tomllib

import pytest

import importlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    listed = set(config["tool"]["setuptools"]["packages"])
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            package = ".".join([name, *rel.parts]) if rel.parts else name
            assert package in listed, f"{package} is missing from [tool.setuptools] packages"


@pytest.mark.parametrize("name", ["symgrad.compiler.graph", "symgrad.compiler.autodiff",
                                  "symgrad.compiler", "symgrad.runtime",
                                  "symgrad.runtime.tensor"])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_docs_pages_are_built_from_real_output():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
