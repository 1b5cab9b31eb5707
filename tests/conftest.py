"""Shared fixtures: every test session gets its own cache (tiny models are built there once)."""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
#: The libraries whose releases change what the suite sees; their versions close every test run, so a
#: CI log says what it tested (constraints.txt pins them; tools/bump-constraints.sh moves the pins).
REPORTED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "kernels", "jsonargparse", "datasets",
                     "tokenizers", "huggingface_hub", "numpy")


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
    torch.set_num_threads(min(2, torch.get_num_threads()))
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
