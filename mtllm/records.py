"""Run records: how a piece of work that can be interrupted or repeated knows whether it may go on.

A run record is a small JSON file beside the work's outputs holding what the work *is* (its **identity**: the
settings that change the output, the models' fingerprints, the input's digest, a stage's inputs hash) and how far
it got (its **state**: rows done, languages finished, ``complete`` / ``status``). Three kinds of work keep one:

* ``mtllm predict`` / ``encode``: ``<output>.progress.json`` (:mod:`mtllm.inference.jobs`);
* an evaluation: ``<output_dir>/partial_results.json``, the languages finished so far
  (:mod:`mtllm.evaluation.partial`);
* ``mtllm run``: each stage folder's ``stage.json`` (:mod:`mtllm.cli.pipeline`).

They all follow these rules (:class:`RunRecord`):

* **Written atomically** and fsynced (:func:`mtllm._io.atomic_write_json`): a reader, or a rerun after ``kill -9``,
  sees the previous record or the new one, never half of one; a killed writer's temporary is removed when the
  record is next read.
* **Read one way**: no file is no record; a file that cannot be read (torn, not JSON, not an object, without the
  fields its kind needs) is no record either, and :attr:`Found.damaged` says why. What "no record" means when the
  outputs are there is the user's rule (predict refuses an output it cannot vouch for; an evaluation starts its
  languages over; a stage folder falls under :func:`mtllm.outputs.claim_output_dir`).
* **Compared on rerun**: the identity recorded against the identity now, as JSON (tuples are lists, paths are
  text), so the same settings always compare equal. :meth:`RunRecord.compare` says ``fresh`` (no record),
  ``continue`` (same identity, unfinished), ``complete`` (same identity, finished) or ``changed``.
* **Differences named**, one line each, by dotted key path (:func:`differences`):
  ``settings.dtype: 'bfloat16' -> 'float32'``.
* **Refused unless** ``--overwrite`` (:meth:`RunRecord.check`): a record of another identity stops the command with
  one :class:`~mtllm.errors.ConfigError` naming the differences and ``--overwrite``; with ``overwrite`` whatever is
  recorded is set aside and the work starts over. (``mtllm run`` redoes a stage whose inputs changed instead, so it
  only compares.)

A record lays its identity out in one of two ways: as its own top-level fields (``{"version": 1, "settings": ...,
"rows_done": 10, ...}``; ``{"hash": ..., "status": ...}``), or under one field (``{"key": {...}, "langs": ...}``,
``identity_field="key"``), so the files written before this module existed are read as they are.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from mtllm._io import atomic_write_json, remove_path, remove_stale_temporaries
from mtllm.errors import ConfigError

__all__ = ["Action", "Found", "RunRecord", "differences"]

#: What a rerun finds: no record, the same work unfinished or finished, or other work.
Action = Literal["fresh", "continue", "complete", "changed"]
_SHOWN = 4  # differences named in a refusal
_VALUE_CHARS = 80  # a value longer than this is cut in a difference line


def _plain(value: Any) -> Any:
    """``value`` as it reads back from a record: JSON types only (tuples as lists, anything else as ``str``)."""
    return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
    """``repr(value)``, a long one cut in the middle (a path's start and a digest's end both show)."""
    text = repr(value)
    half = (_VALUE_CHARS - 3) // 2
    return text if len(text) <= _VALUE_CHARS else f"{text[:half]}...{text[-half:]}"


def differences(old: Any, new: Any, *, legacy: Mapping[str, tuple[Any, ...]] | None = None) -> list[str]:
    """What differs between two identities, one ``path: old -> new`` line each, sorted by path: mappings are
    compared key by key (the path is the dotted keys, e.g. ``settings.dtype``; a key on one side only has ``None``
    on the other), everything else whole. Both sides are compared as JSON (:func:`_plain`).

    ``legacy`` maps a dotted path to values that older records wrote there and that match any value now (a
    setting recorded before it was resolved, e.g. ``{"settings.dtype": ("auto",)}``)."""
    out: list[str] = []
    _walk(_plain(old), _plain(new), "", dict(legacy or {}), out)
    return out


def _walk(old: Any, new: Any, path: str, legacy: dict[str, tuple[Any, ...]], out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            _walk(old.get(key), new.get(key), f"{path}.{key}" if path else key, legacy, out)
    elif old != new and old not in legacy.get(path, ()):
        out.append(f"{path or '(the whole record)'}: {_show(old)} -> {_show(new)}")


@dataclass(frozen=True)
class Found:
    """What :meth:`RunRecord.compare` (or :meth:`RunRecord.check`) found."""

    action: Action
    #: the record read (``None``: there is none, or it cannot be read); after ``check(overwrite=True)`` the record
    #: that is set aside
    record: dict[str, Any] | None = None
    #: ``changed`` (or set aside): what differs, one line each (:func:`differences`)
    changes: tuple[str, ...] = ()
    #: whether the record says its work finished
    finished: bool = False
    #: why a record that is there cannot be read (then ``record`` is ``None``)
    damaged: str | None = None


class RunRecord:
    """One run record file (see the module).

    ``identity_field``: the field holding the identity (``None``: the identity's keys are top-level fields of the
    record). ``finished``: the field and value that mark finished work. ``state``: fields a readable record must
    hold, with their types (a record without them cannot be read). ``legacy``: see :func:`differences`."""

    def __init__(self, path: str | Path, *, identity_field: str | None = None,
                 finished: tuple[str, Any] = ("complete", True), state: Mapping[str, type] | None = None,
                 legacy: Mapping[str, tuple[Any, ...]] | None = None) -> None:
        self.path = Path(path)
        self.identity_field, self.finished = identity_field, finished
        self.state, self.legacy = dict(state or {}), dict(legacy or {})

    # ------------------------------------------------------------------------------------------ read / write
    def _load(self) -> tuple[dict[str, Any] | None, str | None]:
        """(the record, why it cannot be read): ``(None, None)`` when there is none."""
        with contextlib.suppress(OSError):  # a writer killed mid-write left one (a read-only folder keeps it)
            remove_stale_temporaries(self.path)
        if not self.path.is_file():
            return None, None
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            return None, f"{type(err).__name__}: {err}"
        if not isinstance(record, dict):
            return None, f"a JSON {type(record).__name__}, not an object"
        needed = {**({self.identity_field: dict} if self.identity_field else {}), **self.state}
        for name, kind in needed.items():
            if not isinstance(record.get(name), kind) or (kind is int and isinstance(record.get(name), bool)):
                return None, f"no {kind.__name__} {name!r}"
        return record, None

    def read(self) -> dict[str, Any] | None:
        """The record, or ``None`` when there is none or it cannot be read."""
        return self._load()[0]

    def write(self, identity: Mapping[str, Any], **state: Any) -> None:
        """Replace the record (atomically, fsynced) by ``identity`` and ``state`` (non-JSON values as ``str``)."""
        body = {self.identity_field: dict(identity)} if self.identity_field else dict(identity)
        atomic_write_json(self.path, {**body, **state}, fsync=True, indent=1, default=str)

    def remove(self) -> None:
        """Remove the record (a missing one is fine)."""
        remove_path(self.path)

    # ------------------------------------------------------------------------------------------ compare
    def _identity_of(self, record: Mapping[str, Any], keys: Mapping[str, Any]) -> dict[str, Any]:
        """The identity ``record`` holds, in the layout of this kind (``keys``: an identity of this kind now,
        whose keys say which top-level fields are the identity)."""
        if self.identity_field:
            return dict(record[self.identity_field])
        return {k: record.get(k) for k in keys}

    def compare(self, identity: Mapping[str, Any]) -> Found:
        """Compare the record with ``identity``; never raises."""
        record, damaged = self._load()
        if record is None:
            return Found("fresh", damaged=damaged)
        field, value = self.finished
        finished = record.get(field) == value
        changes = tuple(differences(self._identity_of(record, identity), identity, legacy=self.legacy))
        if changes:
            return Found("changed", record, changes, finished)
        return Found("complete" if finished else "continue", record, (), finished)

    def check(self, identity: Mapping[str, Any], *, overwrite: bool,
              what: str | Callable[[dict[str, Any]], str]) -> Found:
        """:meth:`compare`, then the ``--overwrite`` rule: with ``overwrite`` any record is set aside (``fresh``,
        the record kept in :attr:`Found.record` for the caller to report); without it a record of another
        identity is refused in one line naming what differs and ``--overwrite``."""
        found = self.compare(identity)
        if overwrite and found.record is not None:
            return Found("fresh", found.record, found.changes, found.finished)
        if found.action == "changed":
            raise self._refusal(found, what)
        return found

    def _refusal(self, found: Found, what: str | Callable[[dict[str, Any]], str]) -> ConfigError:
        """The one-line error for a record of another identity: ``what`` (the output, or a function of the record
        that describes it) was started or written by a run that differs, naming the differences and
        ``--overwrite``."""
        name = what(found.record or {}) if callable(what) else what
        shown = "; ".join(found.changes[:_SHOWN])
        if len(found.changes) > _SHOWN:
            shown += f"; and {len(found.changes) - _SHOWN} more"
        verb, goal = ("written", "keep it") if found.finished else ("started", "continue it")
        return ConfigError(f"{name} was {verb} by a run that differs ({shown}): rerun with its settings and input to "
                           f"{goal}, or pass --overwrite to start over")
