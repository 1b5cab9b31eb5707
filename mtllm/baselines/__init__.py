"""Baselines the MT-LLM is compared with: the encoder alone with a linear probe, and translate-test."""
