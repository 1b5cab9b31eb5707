"""The task registry: :func:`register_task`, :func:`get_task` (a name, an alias, or the path of a task YAML, read
by the loader :mod:`mtllm.tasks.files` sets with :func:`set_task_file_loader`), :func:`list_tasks`, and
:func:`check_transfer` (can a model trained on one task be evaluated on another).
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Callable

from mtllm.errors import ConfigError
from mtllm.tasks.spec import TaskSpec, _task_key

__all__ = ["TASKS", "register_task", "get_task", "list_tasks", "is_task_file", "TASK_FILE_SUFFIXES",
           "set_task_file_loader", "check_transfer"]

TASKS: dict[str, TaskSpec] = {}
_ALIASES: dict[str, str] = {}  # alias -> name



def register_task(task: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Make ``task`` known to :func:`get_task` (and so to every loader and command) under its name and
    aliases; returns it. A name or alias already taken is an error unless ``overwrite`` (which replaces
    the task holding it)."""
    if not isinstance(task, TaskSpec):
        raise TypeError(f"register_task needs a mtllm.tasks.TaskSpec, got {type(task).__name__}")
    keys = [task.name, *(_task_key(a) for a in task.aliases)]
    taken = {k: TASKS.get(k) or TASKS[_ALIASES[k]] for k in keys if k in TASKS or k in _ALIASES}
    if taken and not overwrite:
        held = ", ".join(f"{k!r} (task {t.name!r})" for k, t in taken.items())
        raise ValueError(f"cannot register task {task.name!r}: {held} already registered; pick another name, or "
                         f"pass overwrite=True to replace it.")
    for old in {t.name: t for t in taken.values()}.values():
        del TASKS[old.name]
        for alias in [a for a, n in _ALIASES.items() if n == old.name]:
            del _ALIASES[alias]
    TASKS[task.name] = task
    _ALIASES.update({k: task.name for k in keys[1:] if k != task.name})
    return task


def list_tasks() -> list[str]:
    return sorted(TASKS)


#: What marks a ``task`` value as the path of a task file rather than a name.
TASK_FILE_SUFFIXES = (".yaml", ".yml")


def is_task_file(name: Any) -> bool:
    """Whether ``name`` (a ``task`` value) is the path of a task file: it ends in ``.yaml`` / ``.yml``."""
    return isinstance(name, (str, os.PathLike)) and str(name).strip().lower().endswith(TASK_FILE_SUFFIXES)


def _no_task_files(path: str | os.PathLike) -> TaskSpec:
    raise ConfigError(f"task file {path}: task files are read by mtllm.tasks.files, which is not imported")


#: Reads the task a task YAML defines; :mod:`mtllm.tasks.files` (imported with :mod:`mtllm.tasks`) sets it to its
#: ``task_from_file``, so that this module, below it, never imports it.
_task_file_loader: Callable[[str | os.PathLike], TaskSpec] = _no_task_files


def set_task_file_loader(loader: Callable[[str | os.PathLike], TaskSpec]) -> None:
    """How :func:`get_task` reads a task YAML (:func:`mtllm.tasks.files.task_from_file`, set when it is imported)."""
    global _task_file_loader
    _task_file_loader = loader


def get_task(name: str | os.PathLike | TaskSpec) -> TaskSpec:
    """The task called ``name`` (or one of its aliases; case and ``_``/``-`` do not matter), a
    :class:`TaskSpec` as it is, or, for the path of a task YAML (``my-task.yaml``), the task it defines
    (:func:`mtllm.tasks.files.task_from_file`: read, checked, registered under its name)."""
    if isinstance(name, TaskSpec):
        return name
    if is_task_file(name):
        return _task_file_loader(name)
    key = _task_key(name)
    key = _ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    close = difflib.get_close_matches(key, list(TASKS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ConfigError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(list_tasks())}. A task of your own: "
                      f"the path of its YAML file (see mtllm.tasks.files).")


def check_transfer(trained: str | TaskSpec, evaluated: str | TaskSpec, *, what: str = "") -> None:
    """A model trained on ``trained`` can be evaluated on ``evaluated``: the same kind and the same label names
    in the same order (the head's outputs are the label indices). Else a one-line :class:`ConfigError` naming
    both tasks and both sets of labels (``what`` prefixes it, e.g. ``"eval_tasks: "``)."""
    a, b = get_task(trained), get_task(evaluated)
    if a.kind != b.kind:
        raise ConfigError(f"{what}{b.name} is a {b.kind} task but the model is trained on {a.name}, a {a.kind} task; "
                          f"evaluate it on tasks of the kind it was trained for")
    if a.kind == "multiple_choice" or list(a.label_names) == list(b.label_names):
        return
    if set(a.label_names) == set(b.label_names):
        where = f" in {a.source}" if getattr(a, "source", "") else ""
        raise ConfigError(f"{what}{a.name}'s labels {list(a.label_names)} are {b.name}'s {list(b.label_names)} in "
                          f"another order (the head's outputs are label indices): list them in {b.name}'s order, "
                          f"labels: [{', '.join(b.label_names)}]{where}")
    raise ConfigError(f"{what}the model is trained on {a.name}, labels {list(a.label_names)}, but {b.name} has the "
                      f"labels {list(b.label_names)}: evaluate it on tasks with the same label names")

