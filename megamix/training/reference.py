"""Load a trained model's weights from a megamix checkpoint directory (DoReMi's reference model)."""

from __future__ import annotations

import os

import torch

from megamix.model.gpt import GPT, GPTConfig
from megamix.training.run_state import read_run_state


def load_state_dict_from_checkpoint(load_dir: str) -> dict[str, torch.Tensor]:
    """The full fp32 model state dict of the newest checkpoint in ``load_dir`` (any ZeRO stage)."""
    state = read_run_state(load_dir)  # every file verified, before unpickling any
    tag = state.tag
    if state.config.training.zero_stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(load_dir, tag=tag)
    states = torch.load(os.path.join(load_dir, tag, "mp_rank_00_model_states.pt"), map_location="cpu",
                        weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}


def load_reference_model(load_dir: str, config: GPTConfig, device: torch.device) -> GPT:
    """A frozen GPT with the weights of ``load_dir``'s newest checkpoint, in eval mode."""
    model = GPT(config)
    missing, unexpected = model.load_state_dict(load_state_dict_from_checkpoint(load_dir), strict=False)
    if missing or unexpected:
        raise ValueError(f"{load_dir}: checkpoint does not match the model configuration "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
