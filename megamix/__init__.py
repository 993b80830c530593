"""megamix: Megatron-style GPT pretraining with online data mixing."""

__version__ = "0.1.0"
