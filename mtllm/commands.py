"""The stage-2, evaluation and pipeline commands of the ``mtllm`` CLI (registered on import)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .cli import Command, register


def _finetune_settings():
    from .training.loop import TrainingArgs
    from .training.stage1 import ModelSettings
    from .training.stage2 import TaskSettings

    return [ModelSettings, TaskSettings, TrainingArgs]


def _finetune_run(settings, values):
    from .training.stage2 import run_finetune

    summary = run_finetune(*settings)
    print(json.dumps({k: summary[k] for k in ("best_dir", "best", "steps", "seconds")}))


def _distill_settings():
    from .training.loop import TrainingArgs
    from .training.stage1 import ModelSettings
    from .training.stage2 import DistillSettings, TaskSettings

    return [ModelSettings, TaskSettings, DistillSettings, TrainingArgs]


def _distill_run(settings, values):
    from .training.stage2 import run_distill

    summary = run_distill(*settings)
    print(json.dumps({k: summary[k] for k in ("final_dir", "steps", "seconds", "trainable", "objective")}))


def _evaluate_settings():
    from .evaluation.evaluate import EvaluateSettings

    return [EvaluateSettings]


def _evaluate_run(settings, values):
    from .evaluation.evaluate import run_evaluate

    run_evaluate(settings[0])


@dataclass
class TranslateTestSettings:
    """Translate a task's texts to English with a seq2seq MT model (cached) and classify them."""

    teacher: str | None = field(default=None, metadata={"help": "Fine-tuned English teacher (finetune's DIR/best)."})
    task: str = field(default="sib200", metadata={"help": "Task name."})
    langs: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "'all' or FLORES-200 codes."})
    split: str = field(default="test", metadata={"help": "Split to evaluate."})
    data_dir: str | None = field(default=None, metadata={"help": "Local data root (else $MTLLM_DATA_DIR, else the hub)."})
    output_dir: str = field(default="runs/translate-test", metadata={"help": "Where results go."})
    max_examples: int | None = field(default=None, metadata={"help": "At most this many examples per language."})


def _translate_test_settings():
    from .translate import TranslateSettings

    return [TranslateTestSettings, TranslateSettings]


def _translate_test_run(settings, values):
    from .evaluation.evaluate import EvaluateSettings, run_evaluate

    tt, tr = settings
    run_evaluate(EvaluateSettings(teacher=tt.teacher, task=tt.task, langs=tt.langs, split=tt.split,
                                  data_dir=tt.data_dir, output_dir=tt.output_dir, max_examples=tt.max_examples,
                                  systems=["translate_test"], translate_model=tr.mt_model),
                 translate_settings=tr)


def _run_settings():
    from .pipeline import PipelineSettings

    return [PipelineSettings]


def _run_run(settings, values):
    from .pipeline import run_pipeline

    run_pipeline(values)


register("finetune", Command("stage 2a: fine-tune the LLM alone (fresh LoRA + head) on an English task", _finetune_settings, _finetune_run))
register("distill", Command("stage 2b: distil the fine-tuned teacher into the MT-LLM", _distill_settings, _distill_run))
register("evaluate", Command("zero-shot evaluation of mtllm/llm/encoder/translate_test on many languages, or retrieval", _evaluate_settings, _evaluate_run))
register("translate-test", Command("translate-test baseline: MT to English, then the English teacher", _translate_test_settings, _translate_test_run))
register("run", Command("the whole pipeline (models, stage 1, teacher, distillation, evaluation), resumable", _run_settings, _run_run, extra_keys=("*",)))
