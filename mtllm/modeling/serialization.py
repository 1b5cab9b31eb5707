"""A saved MT-LLM's folder: its layout (:data:`WEIGHTS_NAME`, :data:`ADAPTER_DIR`, :data:`OWN_FILES`), its
fingerprint (:func:`model_fingerprint`), the checks a folder passes before any weights load (a folder, no pickles,
an MT-LLM ``config.json``, complete safetensors, base models that load and fit, an adapter of this LLM), and the
base-model references ``save_pretrained`` / ``push_to_hub`` record (hub ids instead of local paths).

:meth:`mtllm.MTLLMModel.save_pretrained`, :meth:`~mtllm.MTLLMModel.from_pretrained` and
:meth:`~mtllm.MTLLMModel.push_to_hub` stay on the class and call into this module."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import huggingface_hub
from safetensors import safe_open
from transformers import AutoConfig

from mtllm.errors import ConfigError, CustomCodeError, UserError
from mtllm.fingerprints import folder_fingerprint
from mtllm.modeling.config import MTLLMConfig
from mtllm.sources import (check_model_folder, check_safetensors, from_hub, load_source, looks_local, read_json_file,
                           refuse_custom_code, resolve_source)

__all__ = ["WEIGHTS_NAME", "ADAPTER_DIR", "OWN_FILES", "model_fingerprint"]

WEIGHTS_NAME = "model.safetensors"
ADAPTER_DIR = "adapter"

#: A saved MT-LLM's own files (the base models are referenced by name in the config, so covered by it).
OWN_FILES = ("config.json", WEIGHTS_NAME, f"{ADAPTER_DIR}/adapter_model.safetensors",
             f"{ADAPTER_DIR}/adapter_config.json")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 over a saved MT-LLM's own files (:data:`OWN_FILES`): the same folder contents, the same fingerprint.
    Caches, resumable evaluations and predict/encode jobs key on it (:func:`mtllm.fingerprints.folder_fingerprint`)."""
    return folder_fingerprint(model_dir, OWN_FILES)


# ---------------------------------------------------------------------- loading: the folder checked first
_MTLLM_FIX = ("copy or save the model again (MTLLMModel.save_pretrained; a run's DIR/final or DIR/best: rerun that "
              "stage)")


def _mtllm_folder(ref: str | os.PathLike) -> Path:
    """The local folder of the saved MT-LLM ``ref`` (a hub id is downloaded, or taken from the cache when
    the hub is unreachable), checked before anything loads: a folder (not a file), no pickles, an MT-LLM
    ``config.json``, a complete ``model.safetensors`` and, when present, a complete LoRA adapter."""
    text = os.fspath(ref)
    root = Path(text).expanduser()
    if not root.exists():
        if looks_local(text):
            raise ConfigError(f"{text}: no such model folder (it looks like a local path, so the hub is not asked); "
                              f"check the path, e.g. a run's DIR/final or DIR/best")
        root = Path(from_hub(text, "MT-LLM",
                             lambda p: p if Path(p).is_dir() else huggingface_hub.snapshot_download(p)))
    if not root.is_dir():
        raise ConfigError(f"{root} is a file, not a model folder: give the folder save_pretrained wrote (config.json, "
                          f"{WEIGHTS_NAME}), e.g. a run's DIR/final or DIR/best")
    _refuse_pickles(root)
    cfg = root / "config.json"
    if not cfg.is_file():
        inside = sorted(p.parent.name for p in root.glob("*/config.json") if (p.parent / WEIGHTS_NAME).is_file())
        hint = (f"its subfolder(s) {', '.join(inside)} hold one: give e.g. {root / inside[0]}" if inside else
                f"it is not a saved MT-LLM (or an interrupted save): {_MTLLM_FIX}")
        raise ConfigError(f"{root} has no config.json; {hint}")
    data = read_json_file(cfg, fix=_MTLLM_FIX)
    kind = data.get("model_type") if isinstance(data, dict) else None
    if kind != MTLLMConfig.model_type:
        raise ConfigError(f"{cfg} is the config of a {kind!r} model, not of an MT-LLM (model_type "
                          f"{MTLLMConfig.model_type!r}): a plain transformers model is given as the encoder or llm "
                          f"setting, not loaded as an MT-LLM")
    refuse_custom_code(root, str(root), "mtllm")
    check_safetensors(root / WEIGHTS_NAME, fix=_MTLLM_FIX)
    if (root / ADAPTER_DIR).exists():
        check_model_folder(root / ADAPTER_DIR, kind="adapter", what="the MT-LLM's LoRA adapter")
    return root


def _refuse_pickles(root: Path) -> None:
    """Checkpoints must not be able to run code: refuse pickled weights."""
    for bad in ("pytorch_model.bin", "adapter/adapter_model.bin", "model.bin", "training_args.bin"):
        if (root / bad).exists():
            raise ConfigError(f"{root / bad} is a pickle file, which can run arbitrary code when loaded; mtllm "
                             f"only loads safetensors. Convert it with safetensors.torch.save_file from a "
                             f"trusted environment.")


def _check_base_refs(root: Path, refs: Sequence[tuple[str, str | None, str | None] | None]) -> None:
    """Check each ``(role, name in config.json, resolved)`` base-model reference of the MT-LLM in ``root``
    before any of them loads: a local one must be a complete model folder (it is never sent to the hub)."""
    for item in refs:
        if item is None:
            continue
        role, name, resolved = item
        if not name:
            raise ConfigError(f"{root / 'config.json'} names no {role} ({role.lower()}_name_or_path is empty): "
                              f"{_MTLLM_FIX}")
        try:
            resolve_source(resolved, what=role)
        except CustomCodeError as err:  # not a broken copy: the folder is what it is
            raise CustomCodeError(f"{root / 'config.json'} refers to the {role} {name!r}: {err}") from None
        except UserError as err:
            fix = ("the model was saved with its base models inside (full=True): copy the whole folder again"
                   if name.startswith("./") else f"restore that path, or pass {role.lower()}= (a loaded model)")
            raise type(err)(f"{root / 'config.json'} refers to the {role} {name!r}, which cannot be loaded ({fix}): "
                            f"{err}") from None


def _check_saved_folder(root: Path, config: MTLLMConfig, *, encoder_ref: str | None, llm_ref: str | None) -> None:
    """Check a saved MT-LLM against itself and its base models before any weights load (a wrong folder is one
    :class:`~mtllm.errors.ConfigError` line, not a traceback from deep inside a load): the base models' hidden
    sizes and types in their ``config.json`` (``encoder_ref`` / ``llm_ref``: ``None`` for instances passed in,
    checked after), the shapes in ``model.safetensors`` (up-projection, head) against ``config.json``, and the
    LoRA adapter's base model, rank and input sizes."""
    for role, ref, size, kind in (("encoder", encoder_ref, config.encoder_hidden_size,
                                   config.to_dict().get("encoder_model_type")),
                                  ("LLM", llm_ref, config.llm_hidden_size, config.to_dict().get("llm_model_type"))):
        if ref is None:
            continue
        base = load_source(ref, role, lambda path: AutoConfig.from_pretrained(path, trust_remote_code=False))
        found_kind = getattr(base, "model_type", None)
        text = getattr(base, "get_text_config", lambda: base)()
        if kind and found_kind and kind != found_kind and kind != getattr(text, "model_type", None):
            _check_type(role, kind, found_kind, ref)
        _check_size(f"{role} hidden size", size, _config_hidden_size(base, f"the {role} {ref}"), ref)
    weights = root / WEIGHTS_NAME
    shapes = _tensor_shapes(weights)
    expected: dict[str, list[int]] = {}
    if config.has_encoder:
        expected.update({"projection.weight": [config.llm_hidden_size, config.encoder_hidden_size],
                         "projection.bias": [config.llm_hidden_size]})
    if config.head_kind:
        out = len(config.label_names) if config.head_kind == "classification" else 1
        expected.update({"head.weight": [out, config.llm_hidden_size], "head.bias": [out]})
    wrong = [f"{k} is {shapes[k]}, config.json says {v}" for k, v in expected.items() if k in shapes and shapes[k] != v]
    wrong += [f"{k} is not a tensor of an MT-LLM with this config" for k in shapes if k not in expected]
    wrong += [f"{k} is missing" for k in expected if k not in shapes]
    if wrong:
        raise ConfigError(f"{weights} does not belong to {root / 'config.json'}: {'; '.join(wrong[:4])} (the weights "
                          "or "
                          f"the head of another model?): {_MTLLM_FIX}")
    adapter = root / ADAPTER_DIR
    if not adapter.is_dir():
        return
    adapter_cfg = read_json_file(adapter / "adapter_config.json", fix=_MTLLM_FIX)
    recorded = adapter_cfg.get("base_model_name_or_path") if isinstance(adapter_cfg, dict) else None
    if llm_ref is not None and isinstance(recorded, str) and recorded:
        resolved = resolve_source(llm_ref, what="LLM")  # a folder (checked by _check_base_refs), or a hub id
        if not _same_base(recorded, config.llm_name_or_path, resolved):
            raise ConfigError(f"{adapter} is a LoRA adapter trained on {recorded!r}, but {root / 'config.json'} names "
                              f"the LLM {config.llm_name_or_path!r}: an adapter of another model was copied in; "
                              f"{_MTLLM_FIX}")
    rank = adapter_cfg.get("r") if isinstance(adapter_cfg, dict) else None
    first_layer_inputs = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    for key, shape in _tensor_shapes(adapter / "adapter_model.safetensors").items():
        if "lora_A" not in key or len(shape) != 2:
            continue
        if isinstance(rank, int) and not adapter_cfg.get("rank_pattern") and shape[0] != rank:
            raise ConfigError(f"{adapter}: {key} has rank {shape[0]}, adapter_config.json says r={rank}: the "
                              f"adapter's files come from two models; {_MTLLM_FIX}")
        if any(f".{name}." in key for name in first_layer_inputs) and shape[1] != config.llm_hidden_size:
            raise ConfigError(f"{adapter}: {key} takes inputs of size {shape[1]}, this MT-LLM's LLM has hidden size "
                              f"{config.llm_hidden_size}: an adapter of another model; {_MTLLM_FIX}")


def _same_base(recorded: str, name: str | None, resolved: str | None) -> bool:
    """Whether an adapter's recorded base model (``base_model_name_or_path``) is the LLM ``name`` (as config.json
    names it) found at ``resolved``: the same name or path, the same folder, or, for a folder that has moved
    since (a cache in another place), a missing folder of the same name."""
    if recorded in (name, resolved):
        return True
    if resolved is None or not Path(resolved).exists():
        return False
    old = Path(recorded).expanduser()
    if old.exists():
        return os.path.samefile(old, resolved)
    return looks_local(recorded) and old.name == Path(resolved).name


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone (no weights are read)."""
    with safe_open(str(path), framework="pt") as fh:
        return {key: list(fh.get_slice(key).get_shape()) for key in fh.keys()}


def _config_hidden_size(cfg: Any, what: str) -> int:
    """The hidden size a transformers config declares (``hidden_size``, ``d_model`` or ``dim``, or its text
    config's ``hidden_size``)."""
    for name in ("hidden_size", "d_model", "dim"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    text = getattr(cfg, "get_text_config", lambda: None)()
    if text is not None and isinstance(getattr(text, "hidden_size", None), int):
        return text.hidden_size
    raise ValueError(f"cannot tell the hidden size of {what}")


def _check_size(what: str, saved: int | None, found: int, source: str | None) -> None:
    if saved is not None and saved != found:
        raise ConfigError(f"model mismatch: the saved MT-LLM was built with {what} {saved}, but the loaded "
                         f"model ({source}) has {found}. Load it with the base models it was trained with.")


def _check_type(what: str, saved: str | None, found: str | None, source: str | None) -> None:
    if saved and found and saved != found:
        raise ConfigError(f"model mismatch: the saved MT-LLM was trained on a {saved!r} {what}, but the loaded {what} "
                         f"({source}) is a {found!r}. Load it with the base models it was trained with.")


# ---------------------------------------------------------------------- saving: the base models it refers to
def _is_loadable_ref(ref: str | None) -> bool:
    if not ref:
        return False
    if ref.startswith(("pocket:", "tiny:")):
        return True
    if Path(ref).exists():
        return True
    return "/" in ref and not ref.startswith((".", "/")) and not Path(ref).is_absolute()


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_ROLES = {"encoder": "encoder_name_or_path", "llm": "llm_name_or_path"}


def _is_local_ref(ref: str) -> bool:
    """Whether a recorded base-model reference is a local path outside the saved folder (``./llm`` is inside)."""
    if ref.startswith(("./", "pocket:", "tiny:")):
        return False
    return looks_local(ref) or Path(ref).expanduser().exists()


def _record_hub_ids(config: MTLLMConfig, base_model_ids: Mapping[str, str], *, for_hub: bool) -> None:
    """Put the hub ids of ``base_model_ids`` (keys ``encoder``/``llm`` or a recorded path) in ``config`` in
    place of what it records (not of a base model saved inside the folder, ``./llm``); with ``for_hub``,
    refuse a local path left over."""
    adapters = list(config.llm_adapters_to_merge)
    for key, hub_id in base_model_ids.items():
        if key not in _ROLES and key not in adapters and key not in (config.encoder_name_or_path,
                                                                     config.llm_name_or_path):
            raise ConfigError(f"base_model_ids has the key {key!r}, which is neither 'encoder', 'llm' nor a base "
                              f"model this model records ({config.encoder_name_or_path!r}, {config.llm_name_or_path!r}"
                              f"{', ' + ', '.join(map(repr, adapters)) if adapters else ''})")
        if not isinstance(hub_id, str) or not _HUB_ID.fullmatch(hub_id) or _is_local_ref(hub_id):
            raise ConfigError(f"base_model_ids[{key!r}] = {hub_id!r} is not a hub id (owner/name, e.g. "
                              f"'google/gemma-3-270m')")
    for role, attr in _ROLES.items():
        ref = getattr(config, attr)
        mapped = base_model_ids.get(role, base_model_ids.get(ref)) if ref is not None else None
        if mapped is not None and not ref.startswith("./"):  # inside the folder (full=True): only the card says
            setattr(config, attr, mapped)
    config.llm_adapters_to_merge = [base_model_ids.get(a, a) for a in adapters]
    if for_hub:
        local = [(role, getattr(config, attr)) for role, attr in _ROLES.items()
                 if getattr(config, attr) is not None and _is_local_ref(getattr(config, attr))]
        local += [(a, a) for a in config.llm_adapters_to_merge if _is_local_ref(a)]
        if local:
            named = ", ".join(f"{key if key in _ROLES else 'adapter to merge'} {path!r}" for key, path in local)
            keys = ", ".join(f"{key!r}: '<owner/name>'" for key, _ in local)
            raise ConfigError(f"this model records local paths as its base models ({named}), which no one loading it "
                              f"from the hub has: map each to the hub id of the same weights with "
                              f"base_model_ids={{{keys}}}, or pass full=True to upload the base models too")


def _base_model_hub_ids(saved: Mapping[str, Any], base_model_ids: Mapping[str, str]) -> list[str]:
    """The hub ids of a saved config's base models, LLM first, for the model card's ``base_model``: a
    recorded hub id, or for one saved inside the folder (``./llm``) its ``base_model_ids`` entry."""
    ids = []
    for role in ("llm", "encoder"):
        ref = saved.get(_ROLES[role])
        if ref is None:
            continue
        if ref.startswith("./"):
            ref = base_model_ids.get(role)
        if ref and not ref.startswith(("pocket:", "tiny:")) and not _is_local_ref(ref):
            ids.append(ref)
    return ids
