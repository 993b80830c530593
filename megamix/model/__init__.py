"""The GPT model and its optional fused kernels."""
