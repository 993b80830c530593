"""Interoperability with the wider ecosystem: Hugging Face checkpoints and tokenizers."""
