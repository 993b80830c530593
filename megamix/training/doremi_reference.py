"""DoReMi's reference model: its weights from a megamix checkpoint, and the ``excess_loss`` signal."""

from __future__ import annotations

import torch

from megamix.model.gpt import GPT, GPTConfig
from megamix.training.run_state import load_state_dict_from_checkpoint
from megamix.training.signals import SignalEnv, SignalProvider


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


class ExcessLoss(SignalProvider):
    """Per sample, the token sum of max(loss − reference loss, 0) (the ``excess_loss`` signal)."""

    name = "excess_loss"
    per_sample = True

    def __init__(self, reference: torch.nn.Module) -> None:
        self.reference = reference

    @torch.no_grad()
    def sample_values(self, micro_batch, losses: torch.Tensor) -> torch.Tensor:
        """Σ over the sample's tokens of max(ℓ_proxy − ℓ_reference, 0)."""
        ref = self.reference(micro_batch.tokens, micro_batch.labels)
        return (losses.detach() - ref).clamp_min(0.0).sum(dim=1)


def excess_loss(env: SignalEnv, options) -> ExcessLoss:
    """The signal's provider for a run: the reference model of ``--doremi-reference`` on the training device."""
    return ExcessLoss(load_reference_model(options.reference, env.cfg.model, env.device))
