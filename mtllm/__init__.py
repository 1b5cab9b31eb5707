"""mtllm: stack a multilingual (MT) encoder into an English-centric LLM, trained by self-distillation."""
