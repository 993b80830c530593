"""Training-side signals: quantities a mixer asks the step to compute (``Phase.signals``).

A method declares the signals it may request in its ``MethodSpec.signals``: a name and the
``"module:attribute"`` of a factory ``factory(env: SignalEnv, options) -> SignalProvider``.
The run builds the providers once, before training (so a provider that cannot fit in
memory refuses then); the step calls them; the loop sums their values over the phase and
hands ``finish(...)`` to the mixer in ``Observation.signals``. Two kinds:

* per-sample (``per_sample = True``): ``sample_values`` gives one value per sample of each
  micro-batch, summed per domain inside the step's :class:`DomainStats` (one all-reduce
  with the losses); the phase's value is their mean per token.
* per-step: ``before_step`` runs with the parameters before the update and returns a
  tensor identical on every rank (or None on a step it skips); the phase's value is the
  sum over the phase divided by its steps, unless the provider's ``finish`` says otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from megamix.training.domain_stats import DomainStats


@dataclass
class SignalEnv:
    """What a signal provider may use: the engine, the step's layout and the run's configs."""

    engine: Any
    """The DeepSpeed engine (``engine.module`` the model, ``engine.optimizer`` its optimizer)."""
    layout: Any
    """The StepLayout (batch sizes, this rank's place)."""
    device: torch.device
    """The training device."""
    cfg: Any
    """The RunConfig."""
    val_batches: list
    """The validation evaluator's micro-batches of this rank (``Evaluator.batches``)."""


class SignalProvider:
    """Computes one named signal beside the training step (see the module docstring)."""

    name: str = "signal"
    per_sample: bool = False
    """True: values per sample, summed per domain with the step's statistics."""

    def before_step(self, step: int, batch, lr: float) -> torch.Tensor | None:
        """A per-step value from the parameters before the update, identical on every rank; None to skip."""
        return None

    def sample_values(self, micro_batch, losses: torch.Tensor) -> torch.Tensor:
        """One value per sample of ``micro_batch`` (its per-token ``losses`` given), for per-sample signals."""
        raise RuntimeError(f"signal {self.name!r}: its provider sets per_sample = True but does not define "
                           "sample_values(micro_batch, losses)")

    def finish(self, total: np.ndarray | None, stats: DomainStats, steps: int) -> np.ndarray:
        """The phase's value of the signal from its per-step ``total`` or the phase's ``stats``."""
        if self.per_sample:
            return stats.per_token(self.name)
        if total is None:
            raise RuntimeError(f"signal {self.name!r}: no value was computed in this phase")
        return np.asarray(total, dtype=np.float64) / max(steps, 1)


def build_providers(declared: dict[str, str], env: SignalEnv, options) -> dict[str, SignalProvider]:
    """The providers of the ``declared`` signals ({name: "module:attribute"})."""
    providers = {}
    for name, path in declared.items():
        module, _, attr = path.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        provider = factory(env, options)
        provider.name = name
        providers[name] = provider
    return providers


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """d loss / d params as one flat vector in ``dtype`` (zeros for unused parameters)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                      for g, p in zip(grads, params)])


def check_buffer_fits(vectors: int, numel: int, dtype: torch.dtype, device: torch.device, what: str) -> None:
    """Refuse before training when ``vectors`` vectors of ``numel`` elements cannot fit on ``device``."""
    need = vectors * numel * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    if need > 0.8 * free:
        raise ValueError(f"{what} keeps {vectors} gradient vectors of {numel:,} parameters in {dtype} "
                         f"({need / 2**30:.2f} GiB) but {device} has {free / 2**30:.2f} GiB free: use a smaller "
                         "model, fewer domains or another method")
