"""Static checks that CI runs through this suite: ``ruff check``, and the package's one-way layering
(``[tool.importlinter]`` in pyproject.toml, checked by ``lint-imports``), which can fail: a lower layer that
imports a higher one, written into a temporary copy of the package, breaks it."""
from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mtllm

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with ``cwd``'s pyproject.toml, finding the ``mtllm`` package in ``cwd`` first."""
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(cwd)})


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "mtllm", tmp_path / "mtllm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_its_layers():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


@pytest.mark.parametrize("module,imports", [
    ("errors.py", "import mtllm.cli"),                                # the ground importing the top, at module level
    ("tasks/registry.py", "def _f():\n    from mtllm.tasks.files import FileTask\n"),  # a function-level import counts
    ("modeling/model.py", "def _g():\n    from mtllm.evaluation import evaluate\n"),
])
def test_a_reversed_import_breaks_the_check(tmp_path, module, imports):
    copy = _copy(tmp_path)
    path = copy / "mtllm" / module
    path.write_text(path.read_text() + "\n\n" + imports + "\n")
    result = _lint_imports(copy)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    importer = "mtllm." + module.removesuffix(".py").replace("/", ".")
    assert f"- {importer} -> " in result.stdout  # the offending import is named


def test_ruff_is_clean():
    """``ruff check`` (pyproject.toml's [tool.ruff]: line length 120, pycodestyle and pyflakes rules) passes over the
    whole repository, so .ci/run, which runs this suite, runs it too."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_package_hides_one_of_its_submodules():
    """A package's attribute named like one of its submodules is that submodule (issue 22): ``mtllm.inference``
    re-exports the function ``predict``, so it must have no ``predict`` module that the function would hide."""
    packages = [mtllm, *(importlib.import_module(info.name)
                         for info in pkgutil.walk_packages(mtllm.__path__, "mtllm.") if info.ispkg)]
    hidden = []
    for package in packages:
        for sub in pkgutil.iter_modules(package.__path__):
            value = getattr(package, sub.name, None)
            name = f"{package.__name__}.{sub.name}"
            if value is not None and not (inspect.ismodule(value) and value.__name__ == name):
                hidden.append(f"{name} (hidden by a {type(value).__name__})")
    assert not hidden, hidden
