"""The project's exceptions, in one place (and :func:`renamed_keyword`, the warning for a renamed keyword).

:class:`UserError` marks a mistake in what the user gave (a config, a data file, a language code, a
path): the command line prints its message as one line and exits 2, because the message already says
what is wrong and how to fix it. Every other exception is a bug or a fault and keeps its traceback.
"""
from __future__ import annotations

import warnings
from typing import Any

__all__ = ["UserError", "ConfigError", "CustomCodeError", "DataError", "UnknownLanguageError",
           "UnsupportedLanguageError",
           "CheckpointError", "TrainingDiverged", "TrainingInterrupted", "renamed_keyword"]


class UserError(Exception):
    """Something the user gave cannot be used; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A config file, setting or override that cannot be used."""


class CustomCodeError(ConfigError):
    """A model folder (or hub model) that needs code of its own, which mtllm never runs."""


class DataError(UserError, ValueError):
    """A data file or record that cannot be read (encoding, format, missing column, bad value)."""


class UnknownLanguageError(UserError, ValueError):
    """Not a FLORES-200 code (the message suggests close ones)."""


class UnsupportedLanguageError(UserError, ValueError):
    """A valid language that a model (encoder, MT model) does not cover, with no fallback given."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a finished step, with a checkpoint written at that step (``checkpoint``);
    ``--resume`` continues from it exactly. A :class:`KeyboardInterrupt`, so it stops whatever called ``train``."""

    def __init__(self, message: str, *, step: int, checkpoint: str):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def renamed_keyword(value: Any, old_value: Any, *, where: str, name: str, old_name: str, default: Any = None) -> Any:
    """The value that the caller of ``where`` gave for the keyword ``name``, or what it gave as ``old_name``, the
    keyword's old name (deprecated: a :class:`FutureWarning` naming ``name``, shown at the caller's line);
    ``default`` when it gave neither. Both is a ``TypeError``. (``route=``, the encoder or LLM route through an
    MT-LLM, was ``path=``.)"""
    if old_value is None:
        return default if value is None else value
    if value is not None:
        raise TypeError(f"{where}() got {name}= and {old_name}=, the old name of {name}=; give {name}= only")
    warnings.warn(f"{where}({old_name}=...) is deprecated: the keyword is called {name}= now ({name}={old_value!r}); "
                  f"{old_name}= will be removed", FutureWarning, stacklevel=3)
    return old_value
