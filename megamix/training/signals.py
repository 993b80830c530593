"""DoGE's per-domain gradient-alignment scores, computed beside the training step.

For step t, with the parameters before the update: g_j is the gradient of domain j's mean
token loss over the global batch, g_v the gradient of the mean token loss of a validation
micro-batch per rank (all domains' eval sets, rotating), and

    score_j = lr_t <g_j, g_v> / mean_j ||g_j||, clipped to [0, 5 lr_t].

Each rank back-propagates only its own samples, grouped by domain (one extra forward and
backward of the batch in total), and the K + 1 flat gradients are summed over ranks in one
all-reduce. The K + 1 vectors are kept in the parameters' dtype on the training device
(refused before training when they would not fit); inner products and norms are taken
in float64. Parameters must be whole on every rank, so ZeRO stage 3 is refused.
"""

from __future__ import annotations

import numpy as np
import torch

from megamix.data.blend import BlendedDataset
from megamix.data.sampler import micro_batch_indices
from megamix.training.distributed import all_reduce_sum, to_host
from megamix.training.loader import load_micro_batch
from megamix.training.step import StepLayout


def check_buffer_fits(vectors: int, numel: int, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse before training when ``vectors`` gradient vectors of ``numel`` elements cannot fit on ``device``."""
    need = vectors * numel * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    if need > 0.8 * free:
        raise ValueError(f"--mixing-method doge keeps {vectors} gradient vectors of {numel:,} parameters in {dtype} "
                         f"({need / 2**30:.2f} GiB) but {device} has {free / 2**30:.2f} GiB free: use a smaller "
                         "model, fewer domains or another method")


class DomainGradScorer:
    """Computes the 'domain_grad_scores' signal for one optimizer step."""

    def __init__(self, module: torch.nn.Module, blend: BlendedDataset, layout: StepLayout, device: torch.device,
                 val_batches: list[dict], zero_stage: int) -> None:
        if zero_stage >= 3:
            raise ValueError("--mixing-method doge needs whole parameters on every rank: use --zero-stage 0, 1 or 2")
        self.module = module
        self.blend = blend
        self.layout = layout
        self.device = device
        self.val_batches = val_batches
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.dtype = self.params[0].dtype
        check_buffer_fits(layout.num_domains + 1, sum(p.numel() for p in self.params), self.dtype, device)

    def _flat_grad(self, loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).to(self.dtype)
                          for g, p in zip(grads, self.params)])

    def _domain_grads(self, step: int) -> torch.Tensor:
        lay = self.layout
        k = lay.num_domains
        g0 = step * lay.global_batch_size
        batch_domains = self.blend.domain_ids(g0, g0 + lay.global_batch_size)
        counts = np.bincount(batch_domains, minlength=k)
        mine = np.concatenate(micro_batch_indices(step, lay.global_batch_size, lay.micro_batch_size,
                                                  lay.dp_rank, lay.dp_size))
        doms = batch_domains[mine - g0]
        n = sum(p.numel() for p in self.params)
        grads = torch.zeros(k, n, dtype=self.dtype, device=self.device)
        for d in range(k):
            idx = mine[doms == d]
            for start in range(0, len(idx), lay.micro_batch_size):
                mb = load_micro_batch(self.blend, idx[start:start + lay.micro_batch_size], self.device)
                losses = self.module(mb.tokens, mb.labels)
                grads[d] += self._flat_grad(losses.sum() / (counts[d] * lay.seq_length))
        return grads

    def _val_grad(self, step: int) -> torch.Tensor:
        b = self.val_batches[step % len(self.val_batches)]
        mask = b["mask"].to(self.device)
        losses = self.module(b["tokens"].to(self.device), b["labels"].to(self.device)) * mask
        return self._flat_grad(losses.sum() / mask.sum().clamp_min(1.0)) / self.layout.dp_size

    def scores(self, step: int, lr: float) -> np.ndarray:
        """The K scores for optimizer step ``step`` at learning rate ``lr``, identical on every rank."""
        was_training = self.module.training
        self.module.train()
        grads = torch.cat([self._domain_grads(step), self._val_grad(step)[None]], dim=0)
        self.module.train(was_training)
        grads = all_reduce_sum(grads)
        g_val = grads[-1].double()
        norms = torch.stack([row.double().norm() for row in grads[:-1]])  # float64 one row at a time
        dots = torch.stack([row.double() @ g_val for row in grads[:-1]])
        present = norms > 0
        mean_norm = norms[present].mean() if present.any() else norms.new_tensor(1.0)
        raw = lr * dots / mean_norm.clamp_min(1e-30)
        return to_host(raw.clamp(0.0, 5.0 * lr))
