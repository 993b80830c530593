"""Aioli's A without probes: the first-order law from per-domain gradients (MIXING.md).

One optimizer step Δθ = −lr · P · Σ_j p_j g_j changes the validation loss of domain i by
ΔL_i ≈ −lr Σ_j p_j ⟨∇L_i^val, P g_j⟩, so the linear dynamic law's per-step coefficient is

    A[i, j] = lr · ⟨v_i, P g_j⟩,

with g_j the gradient of domain j's mean training token loss, v_i the gradient of domain
i's mean validation token loss and P = diag(1 / (√v̂ + ε)) Adam's preconditioner, read from
the optimizer's own state (v̂ = exp_avg_sq / (1 − β₂ᵗ), t and ε the optimizer's). The
estimate is taken with the parameters before the update, every ``interval`` steps; the
round trains at p throughout.

What is left out of the first-order picture: Adam's momentum spreads this step's gradient
over later steps with weights that sum to one (so lr·P·g is its whole effect while lr
and P change slowly), gradient clipping scales every column alike (normalisation removes
it), and decoupled weight decay does not depend on the mixture.

**Across ranks.** The products are bilinear, so summed gradients cannot be split per rank.
Each rank r forms its own estimate X_r[i, j] = ⟨v_i^r, P g_j^r⟩ with g_j^r the gradient of
the mean loss of *its own* samples of domain j in this step's batch and v_i^r that of its
own validation micro-batch of domain i (``--aioli-grad-val-batch`` samples, default the
training micro-batch size; different samples on every rank, rotating with the
step). The ranks' matrices are averaged in one all-reduce of a (K+1)×(K+1) tensor that
also carries per-domain presence counts: a domain with no samples on a rank contributes
nothing there, and column j is averaged over the ranks that had domain j. With validation
and training samples independent, each X_r is an unbiased estimate of ⟨E v_i, P E g_j⟩,
so the average is too (on one rank it is the exact product). P is the same on every rank
(ZeRO 0 holds it whole; at ZeRO 1–2 each parameter's state is gathered from its
partitions, one all-reduce per parameter tensor). ZeRO 3 is refused: per-domain autograd
needs whole parameters.

**Per-step value** (what :meth:`AioliGradientEstimator.before_step` returns, float64
(K+1)×(K+1), identical on every rank): ``[:K, :K]`` lr·⟨v_i, P g_j⟩ (lookahead:
L_i(θ) − L_i(θ − δ_j)) averaged over the ranks with domain j (0 where no rank had it), ``[K, :K]`` 1 where some rank had domain j,
``[:K, K]`` the mean validation loss of domain i's micro-batches, ``[K, K]`` 1. Summed over
a round's estimated steps, ``megamix.mixing.aioli.gradient_estimate`` turns the sum into A (columns divided by their
own step counts), the mean micro-batch validation losses and the number of steps estimated.

**Lookahead** (``--aioli-estimator lookahead``, ``mode="lookahead"``): a virtual one-step
probe per domain. From the optimizer's own moments (m, v, step t), the update Adam would
make if this step's gradient were g_j alone is δ_j = lr · m̂'/(√v̂' + ε) with
m' = β₁m + (1 − β₁)g_j and v' = β₂v + (1 − β₂)g_j² (bias-corrected at t + 1; plain SGD:
δ_j = lr · g_j). Take θ − δ_j, evaluate each validation micro-batch there (no grad, eval
mode), set A[i, j] = L_i(θ) − L_i(θ − δ_j), then restore θ bit for bit. Unlike the
inner product this keeps what a real step pays for its curvature and noise, and Adam's own
bound on a step (g/√v' cannot blow up where v is small); the momentum's share of δ_j is
the same for every j, so it shifts each row of A alike, which normalisation and the EG
step ignore. Weight decay (the same for every j) and gradient clipping are left out. It
costs K·K validation forwards instead of K validation backwards and needs fp32 parameters
(a step of lr·m̂/√v̂ is below bf16's resolution).

Memory: K preconditioned training gradients in the parameters' dtype, one validation
gradient being dotted, and P in float32 (lookahead: K raw gradients, Adam's two moments,
the step and a copy of the parameters); refused before training when they cannot fit.
"""

from __future__ import annotations

import numpy as np
import torch

from megamix.data.domain import build_domain_datasets
from megamix.training.distributed import all_reduce_sum
from megamix.training.signals import SignalEnv, SignalProvider, check_buffer_fits, flat_grad


def _torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrappers (following ``.optimizer``)."""
    inner = optimizer
    for _ in range(4):
        if isinstance(inner, torch.optim.Optimizer):
            return inner
        inner = getattr(inner, "optimizer", None)
    raise ValueError(f"--aioli-estimator gradient: found no torch optimizer in {type(optimizer).__name__}")


class IdentityPreconditioner:
    """Plain SGD's preconditioner, P = I."""

    def flat(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """P as a scalar 1 (it broadcasts over the flat gradient)."""
        return torch.ones((), dtype=dtype, device=device)

    def update(self, device: torch.device, dtype: torch.dtype):
        """SGD's update direction (to be scaled by lr) for a gradient: the gradient itself."""
        return lambda g: g.to(dtype)


class AdamPreconditioner:
    """Adam's diag(1/(√v̂ + ε)) for each parameter of ``params``, read from ``optimizer``'s actual state.

    ``adam`` is the torch optimizer inside ``optimizer``, which is a torch Adam/AdamW or
    what a DeepSpeed engine holds at ZeRO 0–2
    (``engine.optimizer``): its own state at ZeRO 0 in fp32, the fp32 master copies of
    DeepSpeed's 16-bit wrapper at ZeRO 0, and DeepSpeed's partitioned state at ZeRO 1–2
    (``deepspeed.utils.safe_get_full_optimizer_state``, a collective: every rank calls
    :meth:`flat` together).
    """

    def __init__(self, optimizer, adam: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        self.wrapper = optimizer
        self.adam = adam
        self.params = params
        self.master = self._master_copies()
        group = self.adam.param_groups[0]
        self.beta1, self.beta2, self.eps = float(group["betas"][0]), float(group["betas"][1]), float(group["eps"])

    def _master_copies(self) -> dict[int, torch.Tensor]:
        """id(model parameter) -> its fp32 master copy in DeepSpeed's 16-bit ZeRO-0 wrapper (else empty)."""
        low, high = getattr(self.wrapper, "fp16_groups", None), getattr(self.wrapper, "fp32_groups", None)
        if not low or not high:
            return {}
        return {id(p): q for lg, hg in zip(low, high) for p, q in zip(lg, hg)}

    def steps(self) -> int:
        """Adam's step count t (0 before its first update)."""
        for state in self.adam.state.values():
            if "step" in state:
                return int(state["step"])
        return 0

    def _state(self, p: torch.Tensor, key: str) -> torch.Tensor:
        if hasattr(p, "_hp_mapping"):  # ZeRO 1-2 (and DeepSpeed's bf16 optimizer): gathered from partitions
            from deepspeed.utils import safe_get_full_optimizer_state

            return safe_get_full_optimizer_state(p, key)
        if hasattr(p, "ds_id"):
            raise ValueError("--aioli-estimator gradient needs whole parameters on every rank: "
                             "use --zero-stage 0, 1 or 2")
        q = self.master.get(id(p), p)
        if q not in self.adam.state:
            raise ValueError(f"--aioli-estimator gradient: the optimizer has no state for a parameter of shape "
                             f"{tuple(p.shape)} (is it trained by this optimizer?)")
        return self.adam.state[q][key]

    def _relink_partitions(self) -> None:
        """Point every parameter's ZeRO 1-2 state fragment at the optimizer's current state.

        DeepSpeed links the fragments once, right after the first parameter group's first
        step, when the other groups (megamix's no-weight-decay group) have no state yet; their
        fragments would stay empty. Re-linking is cheap (views of the flat partitions).
        """
        groups = getattr(self.wrapper, "bit16_groups", None)
        flat = getattr(self.wrapper, "single_partition_of_fp32_groups", None)
        if not groups or not flat:
            return
        from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

        for params, partition in zip(groups, flat):
            if partition in self.adam.state:
                lazy_init_hp_params_optimizer_state(params, partition, self.adam.state)

    def flat(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """P as one flat vector in ``dtype``, in the order of ``params``; None before Adam's first update."""
        t = self.steps()
        if t == 0:
            return None
        v_hat = self._flat_state("exp_avg_sq", device, dtype) / (1.0 - self.beta2 ** t)
        return 1.0 / (v_hat.sqrt_() + self.eps)

    def _flat_state(self, key: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """One moment of every parameter as one flat vector (a collective at ZeRO 1-2)."""
        self._relink_partitions()
        return torch.cat([self._state(p, key).reshape(-1).to(device, dtype) for p in self.params])

    def update(self, device: torch.device, dtype: torch.dtype):
        """Adam's next update direction (to be scaled by lr) as a function of the step's gradient g,
        from its own moments: m̂'/(√v̂' + ε) at step t + 1; None before its first update."""
        t = self.steps()
        if t == 0:
            return None
        m, v = self._flat_state("exp_avg", device, dtype), self._flat_state("exp_avg_sq", device, dtype)
        b1, b2, eps = self.beta1, self.beta2, self.eps
        c1, c2 = 1.0 - b1 ** (t + 1), 1.0 - b2 ** (t + 1)

        def direction(g: torch.Tensor) -> torch.Tensor:
            g = g.to(dtype)
            return (m * b1 + g * (1 - b1)) / c1 / (((v * b2 + g * g * (1 - b2)) / c2).sqrt_() + eps)

        return direction


def make_preconditioner(optimizer, params: list[torch.Tensor]):
    """The preconditioner of ``optimizer`` (Adam-type: its state; torch SGD without momentum: identity)."""
    inner = _torch_optimizer(optimizer)
    group = inner.param_groups[0]
    if "betas" in group and "eps" in group:
        return AdamPreconditioner(optimizer, inner, params)
    if isinstance(inner, torch.optim.SGD) and not group.get("momentum"):
        return IdentityPreconditioner()
    raise ValueError(f"--aioli-estimator gradient knows the preconditioner of Adam-type optimizers and plain SGD, "
                     f"not {type(inner).__name__}: use --aioli-estimator probes")


class ValidationDraws:
    """Per-domain validation micro-batches that rotate with the estimate and differ between ranks.

    Domain i's pool is its first ``num_samples`` validation samples (the run's eval set);
    estimate e on rank r reads pool positions (e·R + r)·B … (e·R + r)·B + B − 1, wrapped.
    """

    def __init__(self, datasets: list, num_samples: int | None, micro_batch_size: int, rank: int,
                 world_size: int) -> None:
        self.datasets = datasets
        self.sizes = [len(ds) if num_samples is None else min(num_samples, len(ds)) for ds in datasets]
        empty = [ds.name for ds, n in zip(datasets, self.sizes) if n == 0]
        if empty:
            raise ValueError(f"--aioli-estimator gradient needs validation samples of every domain; none for "
                             f"{empty} (raise the validation part of --split)")
        self.mbs, self.rank, self.world = micro_batch_size, rank, world_size

    def batch(self, domain: int, estimate: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
        """(tokens, labels, loss mask) of domain ``domain``'s micro-batch for estimate number ``estimate``."""
        first = (estimate * self.world + self.rank) * self.mbs
        ks = [(first + m) % self.sizes[domain] for m in range(self.mbs)]
        items = [self.datasets[domain][k] for k in ks]
        stack = [torch.from_numpy(np.stack([s[key] for s in items])) for key in ("tokens", "labels", "loss_mask")]
        return stack[0].long().to(device), stack[1].long().to(device), stack[2].float().to(device)


MODES = ("gradient", "lookahead")
"""How a per-step A is formed: the inner product lr·⟨v_i, P g_j⟩, or a virtual step's loss change."""


class AioliGradientEstimator(SignalProvider):
    """Per-step estimates of Aioli's A from per-domain gradients (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, optimizer, num_domains: int, device: torch.device,
                 validation: ValidationDraws, micro_batch_size: int, interval: int, zero_stage: int,
                 mode: str = "gradient") -> None:
        if mode not in MODES:
            raise ValueError(f"--aioli-estimator: expected one of {MODES}, got {mode!r}")
        if zero_stage >= 3:
            raise ValueError("--aioli-estimator gradient needs whole parameters on every rank (per-domain "
                             "autograd): use --zero-stage 0, 1 or 2, or --aioli-estimator probes")
        if interval < 1:
            raise ValueError(f"--aioli-grad-interval must be >= 1, got {interval}")
        self.module = module
        self.mode = mode
        self.k = num_domains
        self.device = torch.device(device)
        self.validation = validation
        self.mbs = micro_batch_size
        self.interval = interval
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.dtype = self.params[0].dtype
        if mode == "lookahead" and self.dtype != torch.float32 and self.dtype != torch.float64:
            raise ValueError(f"--aioli-estimator lookahead needs fp32 parameters (a virtual Adam step is below "
                             f"the resolution of {self.dtype}): use --aioli-estimator gradient")
        self.work = torch.promote_types(self.dtype, torch.float32)  # P, and P g before it is stored
        self.numel = sum(p.numel() for p in self.params)
        self.preconditioner = make_preconditioner(optimizer, self.params)
        extra = -(-self.work.itemsize // self.dtype.itemsize)  # P in at least float32
        vectors = num_domains + 1 + (4 if mode == "lookahead" else extra)  # lookahead: m, v, the step, θ's copy
        check_buffer_fits(vectors, self.numel, self.dtype, self.device, f"--aioli-estimator {mode}")

    def before_step(self, step: int, batch, lr: float) -> torch.Tensor | None:
        """The (K+1)×(K+1) value of optimizer step ``step`` (all-reduced), or None when not estimated.

        Called with the parameters before the update. Steps off the interval are skipped, and
        so is step 0 (no update yet, so no preconditioner).
        """
        if step % self.interval or step == 0:
            return None
        lookahead = self.mode == "lookahead"
        rule = (self.preconditioner.update if lookahead else self.preconditioner.flat)(self.device, self.work)
        if rule is None:
            return None
        was_training = self.module.training
        self.module.train()
        estimate = step // self.interval
        grads, present = self.domain_grads(batch.micro_batches, None if lookahead else rule)
        out = torch.zeros(self.k + 1, self.k + 1, dtype=torch.float64, device=self.device)
        if lookahead:
            self._lookahead(out, grads, present, estimate, lr, rule)
        else:
            self._products(out, grads, present, estimate)
        out[self.k, :self.k] = torch.from_numpy(present.astype(np.float64))
        out[self.k, self.k] = 1.0
        self.module.train(was_training)
        return self._combine(all_reduce_sum(out), 1.0 if lookahead else lr)

    def _products(self, out: torch.Tensor, pg: torch.Tensor, present: np.ndarray, estimate: int) -> None:
        """out[i, j] = ⟨v_i, P g_j⟩ and out[i, K] = the validation micro-batch loss, on this rank."""
        for i in range(self.k):
            v, out[i, self.k] = self._val_grad(i, estimate)
            for j in np.flatnonzero(present):
                out[i, j] = torch.dot(pg[j].double(), v.double())

    @torch.no_grad()
    def _lookahead(self, out: torch.Tensor, grads: torch.Tensor, present: np.ndarray, estimate: int,
                   lr: float, direction) -> None:
        """out[i, j] = L_i(θ) − L_i(θ − lr·direction(g_j)) and out[i, K] = L_i(θ); θ restored exactly."""
        k = self.k
        batches = [self.validation.batch(i, estimate, self.device) for i in range(k)]
        self.module.eval()
        base = [self._val_loss(b, torch.float64) for b in batches]
        saved = [p.detach().clone() for p in self.params]
        for j in np.flatnonzero(present):
            try:
                delta, offset = direction(grads[j]), 0
                for p in self.params:
                    p.sub_(delta[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=lr)
                    offset += p.numel()
                del delta
                for i in range(k):
                    out[i, j] = base[i] - self._val_loss(batches[i], torch.float64)
            finally:
                for p, s in zip(self.params, saved):
                    p.copy_(s)
        for i in range(k):
            out[i, k] = base[i]

    def _val_loss(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  dtype: torch.dtype | None = None) -> torch.Tensor:
        """The mean token loss of one validation micro-batch, summed in ``dtype`` (default: the losses')."""
        tokens, labels, mask = batch
        losses = self.module(tokens, labels)
        losses = losses.to(dtype or losses.dtype) * mask.to(dtype or losses.dtype)
        return losses.sum() / mask.sum().clamp_min(1.0)

    def domain_grads(self, micro_batches: list, p_flat: torch.Tensor | None) -> tuple[torch.Tensor, np.ndarray]:
        """P g_j^r for each domain j (K × numel, parameters' dtype; g_j^r itself when ``p_flat`` is None)
        and which domains this rank has.

        g_j^r is the gradient of the mean token loss of this rank's samples of domain j,
        taken over the given micro-batches regrouped by domain (micro_batch_size per pass).
        """
        windows = torch.cat([mb.windows for mb in micro_batches])
        domain_id = torch.cat([mb.domain_id for mb in micro_batches]).to(windows.device)
        grads = torch.zeros(self.k, self.numel, dtype=self.dtype, device=self.device)
        present = np.zeros(self.k, dtype=bool)
        for d in range(self.k):
            rows = windows[domain_id == d]
            if rows.shape[0] == 0:
                continue
            present[d] = True
            tokens = rows.shape[0] * (rows.shape[1] - 1)
            for start in range(0, rows.shape[0], self.mbs):
                chunk = rows[start:start + self.mbs]
                losses = self.module(chunk[:, :-1], chunk[:, 1:])
                grads[d] += flat_grad(losses.sum() / tokens, self.params, self.dtype)
            if p_flat is not None:
                grads[d] = (grads[d].to(self.work) * p_flat).to(self.dtype)
        return grads, present

    def _val_grad(self, domain: int, estimate: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self._val_loss(self.validation.batch(domain, estimate, self.device))
        return flat_grad(mean, self.params, self.dtype), mean.detach().double()

    def _combine(self, summed: torch.Tensor, lr: float) -> torch.Tensor:
        """Average the ranks' products over the ranks that had each domain; scale by lr."""
        k = self.k
        ranks = summed[k, :k]
        out = summed.clone()
        out[:k, :k] = lr * summed[:k, :k] / ranks.clamp_min(1.0)
        out[k, :k] = (ranks > 0).double()
        out[:k, k] = summed[:k, k] / summed[k, k]
        out[k, k] = 1.0
        return out

    def finish(self, total: np.ndarray | None, stats, steps: int) -> np.ndarray:
        """The round's sum of per-step values as is (zeros when no step was estimated)."""
        return np.zeros((self.k + 1, self.k + 1)) if total is None else np.asarray(total, dtype=np.float64)


def gradient_signal(env: SignalEnv, options) -> AioliGradientEstimator:
    """The run's estimator: its validation draws from the run's validation split (--aioli-grad-val-batch
    samples a domain, default the micro-batch size), its interval from the flags (default half a round)."""
    cfg, lay = env.cfg, env.layout
    validation = ValidationDraws(build_domain_datasets(cfg.data, "valid"), cfg.data.eval_samples_per_domain,
                                 options.grad_val_batch or cfg.training.micro_batch_size, lay.dp_rank, lay.dp_size)
    return AioliGradientEstimator(env.engine.module, env.engine.optimizer, lay.num_domains, env.device, validation,
                                  cfg.training.micro_batch_size, options.estimate_interval(cfg.mixing.update_interval),
                                  cfg.training.zero_stage,
                                  options.estimator)
