"""Data: Megatron-format indexed datasets, tokenizers, domain streams, the mixture schedule and blend."""
