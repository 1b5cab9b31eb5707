"""Evaluation tasks: one registry, every language a FLORES-200-style code (see :mod:`mtllm.data.languages`).

Each task loads from a local data directory (``data_dir`` argument, else ``$MTLLM_DATA_DIR``) laid out as
the dataset is distributed, or, with no data directory, from the Hugging Face hub (``datasets``, lazily):

=============  ====================================================================================
task           local layout under ``DATA_DIR`` (hub id)
=============  ====================================================================================
sib200         ``sib200/<code>/{train,dev,test}.tsv`` + ``labels.txt`` (``Davlan/sib200``, config = code)
nusax          ``nusax-senti/<language name>/{train,valid,test}.csv`` (``indonlp/NusaX-senti``, config =
               ISO 639-3 code, e.g. ``nij``)
xnli           ``xnli/xnli.{dev,test}.tsv`` (XNLI-1.0 release) or ``xnli/<iso or code>/<split>.{jsonl,tsv,
               csv}`` in the hub's columns premise/hypothesis/label (``facebook/xnli``, config = ISO 639-1)
americasnli    ``americasnli/{dev,test}/<config>.tsv`` (the AmericasNLI release) or
               ``americasnli/<config or code>/<split>.{jsonl,tsv,csv}`` (``nala-cub/americas_nli``)
kardes-nlu     ``kardes-nlu/[Data/]<language>/xnli.{dev,test}.<iso>.csv`` (the Kardeş-NLU GitHub release,
               https://github.com/lksenel/Kardes-NLU: it is not on the hub)
belebele       ``belebele/<code>.jsonl`` (test) and, for training data you supply yourself,
               ``belebele/{train,validation}/<code>.jsonl`` (``facebook/belebele``, config = code, test only)
=============  ====================================================================================

Split names are always ``train`` / ``validation`` / ``test`` (``TaskSpec.splits`` maps them to the dataset's).
AmericasNLI and Kardeş-NLU have no training split: they are trained on English XNLI (= MNLI),
``TaskSpec.train_task``; :func:`load_train_examples` follows that. Belebele has no training split either:
supply English multiple-choice data in Belebele's columns as ``belebele/train/eng_Latn.jsonl``.

Bad input fails loudly, naming the file (and line) and the fix: unknown task or language, missing file,
missing columns, non-UTF-8 text, a label outside ``TaskSpec.label_names`` or a blank one. Blank text is not
an error: a row with one blank segment of a pair is kept (the segment ``""``), a row with no text at all is
dropped, and both are counted in the ``report`` of what :func:`load_examples` returns (see
:mod:`mtllm.tasks.readers`); nothing is dropped silently.

Each benchmark is one module (``sib200``, ``nusax``, ``xnli``, ``americasnli``, ``kardes_nlu``, ``belebele``)
defining a :class:`TaskSpec` subclass and registering it; what they share is in :mod:`mtllm.tasks.examples`
(the example, the bad-row report, the errors), :mod:`mtllm.tasks.readers` (file and hub readers, row mappers),
:mod:`mtllm.tasks.spec` (:class:`TaskSpec`), :mod:`mtllm.tasks.registry` and :mod:`mtllm.tasks.loading`.
A task of your own needs no change here::

    from mtllm.tasks import TaskSpec, register_task, load_examples
    register_task(TaskSpec(name="my-sentiment", kind="classification", label_names=("neg", "pos"),
                           hub_id=None, languages=("eng_Latn", "deu_Latn")))
    load_examples("my-sentiment", "deu_Latn", "test", "data")  # data/my-sentiment/deu_Latn/test.jsonl

A task defined by files needs no code: a YAML naming one file per split and language (csv/tsv/jsonl/parquet)
and its columns, given wherever a task name is (``mtllm run --task my-task.yaml``); see
:mod:`mtllm.tasks.files` (``load_task_file``, ``task_from_dict``).

The default reader takes ``DATA_DIR/<local_dir or name>/<code>/<split>.{jsonl,tsv,csv}`` in the columns of
the task's kind (``KIND_COLUMNS``: text, label | premise, hypothesis, label | Belebele's); subclass
:class:`TaskSpec` and override ``read_local`` / ``read_hub`` / ``local_languages`` for another layout.
"""

from mtllm.tasks.examples import (DATA_DIR_ENV, KINDS, SPLITS, DataNotFoundError, DataUnavailableError, Example,
                                  Examples, LoadReport, TaskDataError)
from mtllm.tasks.spec import KIND_COLUMNS, TaskSpec
from mtllm.tasks.registry import TASKS, check_transfer, get_task, is_task_file, list_tasks, register_task
from mtllm.tasks.loading import (DATA_PREFIX, available_languages, data_ref_problem, load_examples, load_train_examples,
                                 resolve_data_dir, resolve_data_ref)
# the benchmarks: importing each registers it
from mtllm.tasks import americasnli, belebele, kardes_nlu, nusax, sib200, xnli  # noqa: F401
from mtllm.tasks.files import (FileTask, check_train_file, load_task_file, load_train_file, load_training_data,
                               task_from_dict, train_file_digest)
from mtllm.tasks.sampling import sample_examples, sample_parallel
from mtllm.tasks.sib200 import SIB200_LABELS

__all__ = [
    "Example", "Examples", "LoadReport", "TaskSpec", "FileTask", "TASKS", "SPLITS", "KINDS", "KIND_COLUMNS",
    "DATA_DIR_ENV", "TaskDataError", "DataNotFoundError", "DataUnavailableError", "register_task", "get_task",
    "list_tasks", "resolve_data_dir", "available_languages", "load_examples", "load_train_examples",
    "load_task_file", "task_from_dict", "is_task_file", "SIB200_LABELS", "check_train_file", "load_train_file",
    "load_training_data", "train_file_digest", "check_transfer", "resolve_data_ref", "DATA_PREFIX", "data_ref_problem",
    "sample_examples", "sample_parallel",
]
