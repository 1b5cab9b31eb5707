"""Shared fixtures: every test session gets its own cache (tiny models are built there once).

Tiers. Every test gets its tier markers here, in :func:`pytest_collection_modifyitems`, never by hand (only
``slow`` is set by hand, on the tests that need real pocket weights). A test's *code* is its function, the
fixtures it uses and, transitively, the functions of tests/ they call (helpers in its own module or imported
from another test module, e.g. tests/fault_inject.py); its markers follow from what that code does:

* ``subprocess``: it starts another Python process: ``subprocess`` (``python -m mtllm``, torchrun,
  benchmarks/run.py, a fork server), ``os.fork``, ``sys.executable`` or ``multiprocessing``;
* ``e2e``: it drives the ``mtllm run`` pipeline (an argument list that starts with ``"run"``, or holds
  ``"mtllm", "run"``; not one whose call is compared to an exit status: ``main(["run", ...]) == 2`` is a usage
  error, nothing runs), or it is in a module whose subject is a whole run (:data:`MODULE_MARKERS`);
* ``faults``: it injects a fault: it uses tests/fault_inject.py or sends a signal (``os.kill``,
  ``send_signal``, ``signal.SIGINT``/``SIGKILL``/``SIGTERM``), or it is in test_faults.py / test_interrupt.py;
* ``distributed``: it starts torchrun (``torch.distributed.run``), or it is in test_distributed.py;
* ``needs_data``: it reads a path under ``../shared/data`` (:data:`SHARED_DATA`, a module constant below it);
  such tests skip themselves where the folder they read is missing (a ``skipif`` on that folder, or a
  ``pytest.skip`` naming the missing file), and the marker only selects them.

``python -m pytest --markers`` lists them; ``-m "not (slow or subprocess or e2e or faults or distributed)"`` is the
quick tier. Where a module moves, change :data:`MODULE_MARKERS` (a name there that is no file is a usage error).
With pytest-xdist, ``distributed`` and ``faults`` tests form one ``xdist_group`` ("serial"): under
``-n 2 --dist loadgroup`` they run one after another on one worker (torchrun's processes, kill and Ctrl-C timing).

Hypothesis profiles: ``ci`` (the default) is deterministic (``derandomize=True``, so no example database) with
the example counts the tests set; ``HYPOTHESIS_PROFILE=thorough python -m pytest ...`` draws fresh random
examples, :data:`THOROUGH_FACTOR` times as many where a test keeps the default count. Both print a failure's
``@reproduce_failure`` blob.

Timeouts: pytest-timeout ends a test that runs longer than ``timeout`` in pyproject.toml with the ``thread``
method: it prints every thread's stack and ends the process (the session; under pytest-xdist only that worker, the
test is reported as crashed and the others run). The ``signal`` method would let the session go on, but SIGALRM
cannot stop a test blocked in C code (a torch or gloo wait) or joining its threads (tried: those hang);
``slow`` tests get :data:`SLOW_TIMEOUT`.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import inspect
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SHARED_DATA = ROOT.parent / "shared" / "data"
#: The libraries whose releases change what the suite sees; their versions close every test run, so a
#: CI log says what it tested (constraints.txt pins them; tools/bump-constraints.sh moves the pins).
REPORTED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "kernels", "jsonargparse", "datasets",
                     "tokenizers", "huggingface_hub", "numpy")

# ------------------------------------------------------------------------------------------ hypothesis
#: ``thorough`` runs this many times the examples of ``ci`` where a test keeps the default count, and draws fresh
#: random examples every run (``derandomize=False``); a test that sets its own ``max_examples`` keeps it (a
#: test's own ``@settings`` win over any profile, and no public API scales them).
THOROUGH_FACTOR = 10
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", settings.get_profile("ci"), derandomize=False,
                          max_examples=settings.get_profile("ci").max_examples * THOROUGH_FACTOR)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ------------------------------------------------------------------------------------------------ tiers
#: Modules whose every test has the marker, whatever their code does (their subject is that tier).
MODULE_MARKERS = {
    "e2e": ("test_pipeline.py", "test_resume.py"),
    "faults": ("test_faults.py", "test_interrupt.py"),
    "distributed": ("test_distributed.py",),
}
#: The other markers registered in pyproject.toml, for the check that every one there is set here.
DETECTED = ("subprocess", "needs_data")
#: ``slow`` tests (real pocket weights: minutes) get this timeout instead of pyproject's default.
SLOW_TIMEOUT = 1800
_PROCESS_MODULES = {"subprocess", "multiprocessing"}
_STARTS_PROCESSES = {("os", "fork"), ("os", "forkpty"), ("sys", "executable")}
_SENDS_SIGNALS = {("os", "kill"), ("os", "killpg"), (None, "send_signal"), ("signal", "SIGINT"),
                  ("signal", "SIGKILL"), ("signal", "SIGTERM"), ("signal", "raise_signal")}
_DISTRIBUTED_ARGS = {"torch.distributed.run", "torchrun"}


@functools.cache
def _defs(filename: str) -> dict[int, ast.AST]:
    """Every function of a file by the line its code object starts at (its first decorator's, if any)."""
    tree = ast.parse(Path(filename).read_text(encoding="utf-8"), filename)
    return {min([node.lineno] + [d.lineno for d in node.decorator_list]): node for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _in_tests(obj) -> bool:
    filename = getattr(getattr(obj, "__code__", None), "co_filename", None) or getattr(obj, "__file__", None)
    return bool(filename) and Path(filename).resolve().is_relative_to(TESTS)


def _under_shared_data(value) -> bool:
    if not isinstance(value, (str, Path)) or not str(value).startswith(("/", ".")):
        return False
    try:
        return Path(value).resolve().is_relative_to(SHARED_DATA.resolve())
    except (OSError, ValueError):
        return False


class _Code:
    """What a test's code does (see the module docstring), read from the source of each function it reaches."""

    def __init__(self) -> None:
        self.uses: set[tuple[str | None, str | None]] = set()  # (module or object name, attribute) pairs
        self.argv: list[list[str]] = []  # argument lists written out: ["run", ...], [sys.executable, "-m", ...]
        self.modules: set[str] = set()  # modules it imports in a function or uses by name
        self.shared_data = False
        self._seen: set[int] = set()

    def add(self, func) -> None:
        func = inspect.unwrap(func)
        code = getattr(func, "__code__", None)
        if code is None or id(code) in self._seen or not _in_tests(func):
            return
        self._seen.add(id(code))
        node = _defs(code.co_filename).get(code.co_firstlineno)
        if node is None:
            return
        names = func.__globals__
        refused = {id(sub.left.args[0]) for stmt in node.body for sub in ast.walk(stmt)  # main([...]) == 2
                   if isinstance(sub, ast.Compare) and isinstance(sub.left, ast.Call) and sub.left.args
                   and all(isinstance(c, ast.Constant) and c.value not in (0, None) for c in sub.comparators)}
        for sub in (n for stmt in node.body for n in ast.walk(stmt)):
            if isinstance(sub, ast.Name):
                self._name(sub.id, names)
            elif isinstance(sub, ast.Attribute):
                owner = sub.value.id if isinstance(sub.value, ast.Name) else None
                target = names.get(owner) if owner else None
                if isinstance(target, types.ModuleType):  # by its own name: `import subprocess as sp` too
                    owner = target.__name__
                    if _in_tests(target):
                        self.add(getattr(target, sub.attr, None))
                self.uses.add((owner, sub.attr))
            elif isinstance(sub, (ast.List, ast.Tuple)) and id(sub) not in refused:
                self.argv.append([e.value if isinstance(e, ast.Constant) else None for e in sub.elts])
            elif isinstance(sub, ast.Import):
                self.modules.update(alias.name for alias in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module:
                self.modules.add(sub.module)
                module = sys.modules.get(sub.module)
                for alias in sub.names:
                    self.uses.add((sub.module, alias.name))
                    if module is not None and _in_tests(module):
                        self.add(getattr(module, alias.name, None))

    def _name(self, name: str, names: dict) -> None:
        value = names.get(name)
        if isinstance(value, types.ModuleType):
            self.modules.add(value.__name__)
        else:  # a name imported from a module (`from subprocess import Popen`) stands for a use of that module
            module = getattr(value, "__module__", None)
            self.uses.add((module, name))
            if isinstance(module, str):
                self.modules.add(module)
        if _under_shared_data(value):
            self.shared_data = True
        elif inspect.isfunction(value):
            self.add(value)

    def has(self, pairs) -> bool:
        """Whether it uses one of ``pairs`` (``(None, attr)``: that attribute of anything)."""
        return any((owner, attr) in self.uses or (owner is None and any(a == attr for _, a in self.uses))
                   for owner, attr in pairs)

    def markers(self) -> set[str]:
        found = set()
        if self.modules & _PROCESS_MODULES or self.has(_STARTS_PROCESSES):
            found.add("subprocess")
        if any(args[:1] == ["run"] or any(args[i:i + 2] == ["mtllm", "run"] for i in range(len(args)))
               for args in self.argv):
            found.add("e2e")
        if "fault_inject" in self.modules or self.has(_SENDS_SIGNALS):
            found.add("faults")
        if any(_DISTRIBUTED_ARGS & set(args) for args in self.argv):
            found.add("distributed")
        if self.shared_data:
            found.add("needs_data")
        return found


def tier_markers(item: pytest.Item) -> set[str]:
    """The tier markers of one collected test (the rules of the module docstring)."""
    code = _Code()
    code.add(getattr(item, "function", None))
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
            code.add(fixturedef.func)
    found = code.markers()
    found.update(marker for marker, modules in MODULE_MARKERS.items() if item.path.name in modules)
    return found


def pytest_configure(config) -> None:
    registered = {line.split(":")[0].strip() for line in config.getini("markers")}
    missing = (set(MODULE_MARKERS) | set(DETECTED)) - registered
    if missing:
        raise pytest.UsageError(f"tests/conftest.py sets markers that pyproject.toml does not register: {missing}")
    gone = [name for names in MODULE_MARKERS.values() for name in names if not (TESTS / name).is_file()]
    if gone:
        raise pytest.UsageError(f"tests/conftest.py MODULE_MARKERS names modules that are not in tests/: {gone}")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's loadgroup reads the xdist_group markers
def pytest_collection_modifyitems(config, items) -> None:
    """The tier markers; ``slow`` tests' longer timeout; ``distributed`` and ``faults`` tests in one xdist group
    (``--dist loadgroup`` runs them one after another on one worker)."""
    timeouts, xdist = config.pluginmanager.hasplugin("timeout"), config.pluginmanager.hasplugin("xdist")
    for item in items:
        for marker in sorted(tier_markers(item)):
            item.add_marker(marker)
        if timeouts and item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
        if xdist and (item.get_closest_marker("distributed") or item.get_closest_marker("faults")):
            item.add_marker(pytest.mark.xdist_group("serial"))


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def pytest_terminal_summary(terminalreporter) -> None:
    """One line of resolved versions before pytest's closing line (shown with ``-q`` too)."""
    terminalreporter.write_line("versions: " + ", ".join(f"{name} {_version(name)}" for name in REPORTED_PACKAGES))


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Isolate the mtllm cache (tiny models, teacher targets) from the user's; keep real pocket models."""
    os.environ.setdefault("MTLLM_DEVICE", "cpu")  # the suite runs on the CPU; tests/test_device.py picks devices itself
    if not os.environ.get("MTLLM_CACHE"):
        os.environ["MTLLM_CACHE"] = str(tmp_path_factory.mktemp("mtllm-cache"))
    # two intra-op threads, split among pytest-xdist workers (-n 2: one each): more threads than cores stall
    # OpenMP at its barriers
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // workers))
    yield


@pytest.fixture
def tiny_model():
    """A tiny MT-LLM (random XLM-R encoder + random Gemma 3 LLM), LoRA r 4, built fresh for each test
    (well under a second): tests may set heads, merge adapters or change weights without changing
    what any other test sees."""
    from mtllm import MTLLMModel, LoraSettings

    torch.manual_seed(0)
    return MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                           max_seq_length=64)


@pytest.fixture
def english_texts():
    return [line for line in (ROOT / "tests" / "fixtures" / "english.txt").read_text().splitlines() if line.strip()]


@pytest.fixture
def one_thread():
    """One intra-op thread in this process for the test: a forked child runs with one (OpenMP is not
    fork-safe), and float outputs compared byte for byte with a child's must come from the same summation order."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fp32_auto(monkeypatch):
    """``dtype: auto`` (the inference commands' default) resolves to float32 for the test, as on a device without
    native bf16, wherever the suite runs: for tests that compare ``mtllm predict`` / ``encode`` files with the
    float32 model of the API to a few 1e-5 (a forked child inherits the patch; tests/test_bf16_policy.py tests auto)."""
    from mtllm import device as device_mod

    monkeypatch.setattr(device_mod, "fast_bf16", lambda device=None: False)


@pytest.fixture
def task_registry():
    """The built-in tasks, left as they were: registering a task (or reading a task file, which registers it) in a
    test does not leak into the next one. Loaded task files are forgotten before and after."""
    from mtllm.tasks import files, registry  # the package under test: imported when a test asks for the fixture

    tasks, aliases = dict(registry.TASKS), dict(registry._ALIASES)
    files._LOADED.clear()
    yield
    registry.TASKS.clear()
    registry.TASKS.update(tasks)
    registry._ALIASES.clear()
    registry._ALIASES.update(aliases)
    files._LOADED.clear()
