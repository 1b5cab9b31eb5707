"""Configuration of the stacked MT-LLM: which encoder, which LLM, and how they are joined."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import PretrainedConfig


@dataclass
class LoraSettings:
    """LoRA on the LLM (PEFT). Defaults are the paper's: r 16, alpha 32, dropout 0.05, all linear layers."""

    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": "Modules to adapt; 'all-linear' = every linear layer of the LLM."})

    def to_peft(self):
        from peft import LoraConfig  # slow: peft (~0.2 s), only when LoRA is added

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, bias="none")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MTLLMConfig(PretrainedConfig):
    """Configuration of :class:`mtllm.MTLLMModel`.

    Args:
        encoder_name_or_path: the (MT) encoder: hub id, local directory or ``pocket:NAME``/``tiny:NAME``.
            ``None`` makes an LLM-only model (the LLM on its own tokens, e.g. a stage-2 teacher).
        llm_name_or_path: the decoder LLM, same forms.
        llm_adapters_to_merge: PEFT adapters merged into the LLM, in order, before the trainable LoRA is
            added (LLM2Vec: the MNTP adapter, then the SimCSE adapter).
        encoder_hidden_size / llm_hidden_size: widths joined by the up-projection ``Linear(d_enc, d_llm)``.
        bidirectional: make the LLM's self-attention non-causal (LLM2Vec style, padding mask only).
        pooling: ``mean``, ``eos`` or ``cls`` over the LLM's last hidden states.
        prepend_llm_bos: put the LLM's own ``<bos>`` embedding before the projected encoder states, as
            the LLM sees ``<bos>`` before its own tokens. Excluded from pooling on both paths.
        encoder_lang_style: how the encoder is told the input language: ``nllb`` (``src_lang`` token),
            ``prefix`` (a fixed text prefix, e5's ``"query: "``) or ``none``.
        encoder_text_prefix: the prefix for ``prefix`` style.
        encoder_languages: FLORES-200 codes the encoder was trained on (``None`` = not restricted).
        max_seq_length: truncation length for both tokenisations.
        lora: :class:`LoraSettings` as a dict, or ``None`` for no trainable adapter.
        label_names / head_kind: the task head, if any (``classification``: one logit per label;
            ``multiple_choice``: one score per option span); saved with the model. ``id2label`` /
            ``label2id`` (the ``transformers`` names for the same labels) always follow ``label_names``:
            setting ``label_names`` (as :meth:`MTLLMModel.set_head` does) sets them, and a config saved
            before they were recorded gets them when it loads.

    Registered with ``transformers`` on ``import mtllm`` (``AutoConfig`` model type ``"mtllm"``,
    ``AutoModel`` -> :class:`mtllm.MTLLMModel`), so ``AutoModel.from_pretrained(folder)`` loads a saved
    MT-LLM through :meth:`mtllm.MTLLMModel.from_pretrained`.
    """

    model_type = "mtllm"

    def __init__(
        self,
        encoder_name_or_path: str | None = None,
        llm_name_or_path: str | None = None,
        llm_adapters_to_merge: list[str] | None = None,
        encoder_hidden_size: int | None = None,
        llm_hidden_size: int | None = None,
        bidirectional: bool = False,
        pooling: str = "mean",
        prepend_llm_bos: bool = True,
        llm_bos_token_id: int | None = None,
        encoder_lang_style: str = "none",
        encoder_text_prefix: str = "",
        encoder_languages: list[str] | None = None,
        max_seq_length: int = 512,
        lora: dict[str, Any] | None = None,
        label_names: list[str] | None = None,
        head_kind: str | None = None,
        pair_separator: str = "\n",
        **kwargs: Any,
    ):
        self.encoder_name_or_path = encoder_name_or_path
        self.llm_name_or_path = llm_name_or_path
        self.llm_adapters_to_merge = list(llm_adapters_to_merge or [])
        self.encoder_hidden_size = encoder_hidden_size
        self.llm_hidden_size = llm_hidden_size
        self.bidirectional = bidirectional
        self.pooling = pooling
        self.prepend_llm_bos = prepend_llm_bos
        self.llm_bos_token_id = llm_bos_token_id
        self.encoder_lang_style = encoder_lang_style
        self.encoder_text_prefix = encoder_text_prefix
        self.encoder_languages = encoder_languages
        self.max_seq_length = max_seq_length
        self.lora = lora
        self.label_names = list(label_names or [])
        self.head_kind = head_kind
        self.pair_separator = pair_separator
        super().__init__(**kwargs)
        if self.label_names:  # transformers' init set its own id2label (from kwargs, or LABEL_0/LABEL_1)
            self._sync_labels(self.label_names)

    def __setattr__(self, key: str, value: Any) -> None:
        super().__setattr__(key, value)
        if key == "label_names":
            if value:
                self._sync_labels(value)
            else:  # no labels (no head, or a multiple-choice head): transformers' default
                super().__setattr__("id2label", {0: "LABEL_0", 1: "LABEL_1"})
                super().__setattr__("label2id", {"LABEL_0": 0, "LABEL_1": 1})

    def _sync_labels(self, names: list[str]) -> None:
        """``id2label`` / ``label2id`` from the head's ``label_names`` (position = logit index)."""
        names = [str(n) for n in names]
        super().__setattr__("id2label", dict(enumerate(names)))
        super().__setattr__("label2id", {n: i for i, n in enumerate(names)})

    @property
    def has_encoder(self) -> bool:
        return self.encoder_name_or_path is not None
