"""DoGE's per-domain gradient-alignment scores (the ``domain_grad_scores`` signal).

For step t, with the parameters before the update: g_j is the gradient of domain j's mean
token loss over the global batch, g_v the gradient of the mean token loss of a validation
micro-batch per rank (all domains' eval sets, rotating), and

    score_j = lr_t <g_j, g_v> / mean_j ||g_j||, clipped to [0, 5 lr_t].

Each rank back-propagates the step's own micro-batches (as the loader read them), regrouped
by domain (one extra forward and backward of the batch in total), and the K + 1 flat
gradients are summed over ranks in one all-reduce. The K + 1 vectors are kept in the
parameters' dtype on the training device (refused before training when they would not
fit); inner products and norms are taken in float64. Parameters must be whole on every
rank, so ZeRO stage 3 is refused.
"""

from __future__ import annotations

import numpy as np
import torch

from megamix.training.distributed import all_reduce_sum
from megamix.training.signals import SignalEnv, SignalProvider, check_buffer_fits, flat_grad


class DomainGradScorer(SignalProvider):
    """Computes the ``domain_grad_scores`` signal for one optimizer step."""

    name = "domain_grad_scores"

    def __init__(self, env: SignalEnv, options=None) -> None:
        if env.cfg.training.zero_stage >= 3:
            raise ValueError("--mixing-method doge needs whole parameters on every rank: use --zero-stage 0, 1 or 2")
        self.module = env.engine.module
        self.layout = env.layout
        self.device = env.device
        self.val_batches = env.val_batches
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.dtype = self.params[0].dtype
        check_buffer_fits(env.layout.num_domains + 1, sum(p.numel() for p in self.params), self.dtype, env.device,
                          "--mixing-method doge")

    def _domain_grads(self, batch) -> torch.Tensor:
        k, mbs = self.layout.num_domains, self.layout.micro_batch_size
        windows = torch.cat([mb.windows for mb in batch.micro_batches])
        domain_id = torch.cat([mb.domain_id for mb in batch.micro_batches])
        n = sum(p.numel() for p in self.params)
        grads = torch.zeros(k, n, dtype=self.dtype, device=self.device)
        for d in range(k):
            rows = windows[domain_id == d]
            for start in range(0, rows.shape[0], mbs):
                chunk = rows[start:start + mbs]
                losses = self.module(chunk[:, :-1], chunk[:, 1:])
                grads[d] += flat_grad(losses.sum() / float(batch.domain_tokens[d]), self.params, self.dtype)
        return grads

    def _val_grad(self, step: int) -> torch.Tensor:
        b = self.val_batches[step % len(self.val_batches)]
        mask = b["loss_mask"].to(self.device)
        losses = self.module(b["tokens"].to(self.device), b["labels"].to(self.device)) * mask
        return flat_grad(losses.sum() / mask.sum().clamp_min(1.0), self.params, self.dtype) / self.layout.dp_size

    def before_step(self, step: int, batch, lr: float) -> torch.Tensor:
        """The K scores of optimizer step ``step`` at learning rate ``lr``, identical on every rank."""
        was_training = self.module.training
        self.module.train()
        grads = torch.cat([self._domain_grads(batch), self._val_grad(step)[None]], dim=0)
        self.module.train(was_training)
        grads = all_reduce_sum(grads)
        g_val = grads[-1].double()
        norms = torch.stack([row.double().norm() for row in grads[:-1]])  # float64 one row at a time
        dots = torch.stack([row.double() @ g_val for row in grads[:-1]])
        present = norms > 0
        mean_norm = norms[present].mean() if present.any() else norms.new_tensor(1.0)
        raw = lr * dots / mean_norm.clamp_min(1e-30)
        return raw.clamp(0.0, 5.0 * lr)
