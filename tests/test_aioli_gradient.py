"""The gradient and lookahead estimators of Aioli's A on a quadratic model whose A is known in closed form.

The model has one parameter vector θ ∈ R^n; token t's loss is ½ Σ_k h_k (θ_k − C[t, k])².
The gradient of a mean token loss over a set of tokens is h ⊙ (θ − c̄) with c̄ the mean of
their target rows, so for a validation micro-batch of domain i (mean c̄_i) and this step's
training samples of domain j (mean c̄_j), A[i, j] = lr · Σ_k h_k² (θ − c̄_i)_k P_k (θ − c̄_j)_k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megamix.mixing.aioli import gradient_estimate
from megamix.training.aioli_gradient import AioliGradientEstimator, ValidationDraws, make_preconditioner
from megamix.training.loader import MicroBatch, StepBatch

K, N, VOCAB, SEQ, MBS = 3, 16, 30, 4, 2


class Quadratic(torch.nn.Module):
    """Per-token loss ½ Σ_k h_k (θ_k − C[label, k])² (float64, so the checks can be tight)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.theta = torch.nn.Parameter(torch.randn(N, generator=g, dtype=torch.float64))
        self.register_buffer("targets", torch.randn(VOCAB, N, generator=g, dtype=torch.float64))
        self.register_buffer("h", torch.rand(N, generator=g, dtype=torch.float64) + 0.5)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.h * (self.theta - self.targets[labels]) ** 2).sum(dim=-1)

    def grad_of_mean(self, labels: torch.Tensor) -> torch.Tensor:
        """Closed-form gradient of the mean token loss over ``labels``."""
        return (self.h * (self.theta - self.targets[labels.reshape(-1)].mean(dim=0))).detach()


class FakeValid:
    """A validation split of one domain: sample k's labels are tokens of domain d (10 per domain)."""

    def __init__(self, d: int, n: int = 5) -> None:
        self.name = f"d{d}"
        rng = np.random.default_rng(100 + d)
        self.windows = rng.integers(10 * d, 10 * d + 10, size=(n, SEQ + 1))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, k: int) -> dict:
        w = self.windows[k]
        return {"tokens": w[:-1], "labels": w[1:], "loss_mask": np.ones(SEQ, dtype=np.float32)}


def make_batch(domains: list[int], seed: int = 1) -> StepBatch:
    """This rank's micro-batches: one sample per entry of ``domains``, tokens of its domain."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(10 * d, 10 * d + 10, size=SEQ + 1) for d in domains]
    windows, ids = torch.tensor(np.stack(rows)), torch.tensor(domains)
    mbs = [MicroBatch(windows[i:i + MBS], ids[i:i + MBS]) for i in range(0, len(domains), MBS)]
    return StepBatch(0, mbs, np.bincount(domains, minlength=K) * float(SEQ))


def closed_form_a(model: Quadratic, batch: StepBatch, draws: ValidationDraws, estimate: int, p: torch.Tensor,
                  lr: float) -> np.ndarray:
    windows = torch.cat([mb.windows for mb in batch.micro_batches])
    ids = torch.cat([mb.domain_id for mb in batch.micro_batches])
    a = np.full((K, K), np.nan)
    for j in range(K):
        if not (ids == j).any():
            continue
        g = model.grad_of_mean(windows[ids == j][:, 1:])
        for i in range(K):
            v = model.grad_of_mean(draws.batch(i, estimate, torch.device("cpu"))[1])
            a[i, j] = lr * float((v * p * g).sum())
    return a


def estimator_for(model: torch.nn.Module, optimizer, interval: int = 1,
                  mode: str = "gradient") -> tuple[AioliGradientEstimator, ValidationDraws]:
    draws = ValidationDraws([FakeValid(d) for d in range(K)], None, MBS, 0, 1)
    return AioliGradientEstimator(model, optimizer, K, torch.device("cpu"), draws, MBS, interval, 0, mode), draws


def test_sgd_estimate_is_the_closed_form_and_predicts_the_step():
    """P = I: the estimate equals the closed form to 1e-12 relative, and one real SGD step changes
    each validation loss by −A p up to the step's second-order term (checked to 1e-12 too)."""
    model = Quadratic()
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    est, draws = estimator_for(model, opt)
    batch = make_batch([0, 0, 1, 2, 2, 2])
    value = est.before_step(3, batch, lr)
    got = gradient_estimate(value.numpy(), K)
    want = closed_form_a(model, batch, draws, 3, torch.ones(N, dtype=torch.float64), lr)
    np.testing.assert_allclose(got.a, want, rtol=1e-12)
    assert got.steps == 1 and got.column_steps.tolist() == [1, 1, 1]
    # one SGD step on the batch's token mean: p_j = domain j's share of the batch's tokens
    p = batch.domain_tokens / batch.domain_tokens.sum()
    windows = torch.cat([mb.windows for mb in batch.micro_batches])
    g = model.grad_of_mean(windows[:, 1:])
    val = [draws.batch(i, 3, torch.device("cpu")) for i in range(K)]
    with torch.no_grad():
        before = np.array([float(model(t, y).mean()) for t, y, _ in val])
        model.theta.grad = g.clone()
        opt.step()
        after = np.array([float(model(t, y).mean()) for t, y, _ in val])
    second = 0.5 * lr ** 2 * float((model.h * g * g).sum())  # ½ lr² gᵀHg, the same for every domain
    np.testing.assert_allclose(before - after, got.a @ p - second, rtol=1e-12, atol=1e-14)


def _trained_adam(model: Quadratic) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for s in range(3):
        model.theta.grad = torch.randn(N, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        opt.step()
    return opt


def test_adam_estimate_uses_the_optimizer_state():
    """Adam after 3 steps: P = 1/(√v̂ + ε) from its state; the estimate equals the closed form (rtol 1e-12)."""
    model = Quadratic(seed=2)
    opt = _trained_adam(model)
    est, draws = estimator_for(model, opt, interval=2)
    batch = make_batch([2, 0, 0, 2])  # no domain 1 on this rank
    assert est.before_step(5, batch, 0.01) is None  # off the interval
    got = gradient_estimate(est.before_step(4, batch, 0.01).numpy(), K)
    v_hat = opt.state[model.theta]["exp_avg_sq"] / (1 - 0.95 ** 3)
    p = 1.0 / (v_hat.sqrt() + 1e-8)
    want = closed_form_a(model, batch, draws, 2, p, 0.01)
    np.testing.assert_allclose(got.a, want, rtol=1e-12)
    assert np.isnan(got.a[:, 1]).all() and got.column_steps.tolist() == [1, 0, 1]


def test_lookahead_is_the_exact_loss_change_of_a_virtual_adam_step():
    """Lookahead on the quadratic: A[i, j] = L_i(θ) − L_i(θ − δ_j) = ⟨v_i, δ_j⟩ − ½ Σ h δ_j², exactly (rtol
    1e-10: a difference of two float64 losses), with δ_j Adam's update at step t + 1 had the step's
    gradient been g_j (computed here from the optimizer's state by hand); θ and the optimizer's state
    are left bit for bit as they were; a domain absent from the batch has no column."""
    model = Quadratic(seed=3)
    opt = _trained_adam(model)
    lr = 0.05
    theta = model.theta.detach().clone()
    state = {k: v.clone() for k, v in opt.state[model.theta].items()}
    est, draws = estimator_for(model, opt, mode="lookahead")
    batch = make_batch([0, 0, 2, 2, 2, 0])
    got = gradient_estimate(est.before_step(4, batch, lr).numpy(), K)
    assert torch.equal(model.theta.detach(), theta)
    assert all(torch.equal(state[k], v) for k, v in opt.state[model.theta].items())
    m, v = state["exp_avg"], state["exp_avg_sq"]
    windows = torch.cat([mb.windows for mb in batch.micro_batches])
    ids = torch.cat([mb.domain_id for mb in batch.micro_batches])
    cpu = torch.device("cpu")
    for j in (0, 2):
        g = model.grad_of_mean(windows[ids == j][:, 1:])
        m_hat = (0.9 * m + 0.1 * g) / (1 - 0.9 ** 4)
        v_hat = (0.95 * v + 0.05 * g * g) / (1 - 0.95 ** 4)
        delta = lr * m_hat / (v_hat.sqrt() + 1e-8)
        for i in range(K):
            vi = model.grad_of_mean(draws.batch(i, 4, cpu)[1])
            want = float((vi * delta).sum()) - 0.5 * float((model.h * delta * delta).sum())
            np.testing.assert_allclose(got.a[i, j], want, rtol=1e-10)
    assert np.isnan(got.a[:, 1]).all()
    with torch.no_grad():
        np.testing.assert_allclose(got.val_loss, [float(model(t, y).mean()) for t, y, _ in
                                                  (draws.batch(i, 4, cpu) for i in range(K))], rtol=1e-14)


def test_lookahead_with_sgd_steps_along_the_gradient():
    """P = I (plain SGD): δ_j = lr·g_j, so A[i, j] = lr⟨v_i, g_j⟩ − ½ lr² Σ h g_j² (the gradient estimate
    minus the step's own second-order term)."""
    model = Quadratic(seed=4)
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batch = make_batch([1, 1, 2, 0])
    first = gradient_estimate(estimator_for(model, opt)[0].before_step(2, batch, lr).numpy(), K).a
    got = gradient_estimate(estimator_for(model, opt, mode="lookahead")[0].before_step(2, batch, lr).numpy(), K).a
    windows = torch.cat([mb.windows for mb in batch.micro_batches])
    ids = torch.cat([mb.domain_id for mb in batch.micro_batches])
    for j in range(K):
        g = model.grad_of_mean(windows[ids == j][:, 1:])
        np.testing.assert_allclose(got[:, j], first[:, j] - 0.5 * lr ** 2 * float((model.h * g * g).sum()), rtol=1e-10)


def test_lookahead_refuses_low_precision_parameters():
    model = Quadratic().to(torch.bfloat16)
    with pytest.raises(ValueError, match="lookahead needs fp32 parameters"):
        estimator_for(model, torch.optim.SGD(model.parameters(), lr=0.1), mode="lookahead")


def test_step_zero_and_a_fresh_optimizer_are_skipped():
    model = Quadratic()
    est, _ = estimator_for(model, torch.optim.Adam(model.parameters(), lr=0.01))
    assert est.before_step(0, make_batch([0, 1, 2, 0]), 0.01) is None
    assert est.before_step(1, make_batch([0, 1, 2, 0]), 0.01) is None  # Adam has taken no step: no P


def test_a_round_sum_averages_each_column_over_its_own_steps():
    model = Quadratic()
    est, _ = estimator_for(model, torch.optim.SGD(model.parameters(), lr=0.1))
    first = est.before_step(1, make_batch([0, 1, 2, 2], seed=1), 0.1).numpy()
    second = est.before_step(2, make_batch([0, 0, 2, 2], seed=2), 0.1).numpy()
    got = gradient_estimate(first + second, K)
    assert got.steps == 2 and got.column_steps.tolist() == [2, 1, 2]
    np.testing.assert_allclose(got.a[:, 1], first[:3, 1])
    np.testing.assert_allclose(got.a[:, 0], (first[:3, 0] + second[:3, 0]) / 2)


def test_validation_draws_rotate_and_differ_between_ranks():
    sets = [FakeValid(d, n=5) for d in range(K)]
    r0, r1 = (ValidationDraws(sets, 4, 2, r, 2) for r in (0, 1))
    cpu = torch.device("cpu")
    first = [r.batch(0, 0, cpu)[1] for r in (r0, r1)]
    assert not torch.equal(first[0], first[1])
    assert torch.equal(r0.batch(0, 1, cpu)[1][0], torch.tensor(sets[0][0]["labels"]))  # position 4 wraps to 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(zero_stage=3), "--zero-stage 0, 1 or 2"),
    (dict(interval=0), "--aioli-grad-interval must be >= 1"),
    (dict(mode="probes"), "expected one of"),
])
def test_errors_name_the_flag(kwargs, match):
    model = Quadratic()
    draws = ValidationDraws([FakeValid(d) for d in range(K)], None, MBS, 0, 1)
    args = dict(interval=1, zero_stage=0, mode="gradient") | kwargs
    with pytest.raises(ValueError, match=match):
        AioliGradientEstimator(model, torch.optim.SGD(model.parameters(), lr=0.1), K, torch.device("cpu"), draws,
                               MBS, args["interval"], args["zero_stage"], args["mode"])


def test_unknown_optimizers_are_refused():
    model = Quadratic()
    with pytest.raises(ValueError, match="--aioli-estimator probes"):
        make_preconditioner(torch.optim.Adagrad(model.parameters()), list(model.parameters()))


@pytest.mark.slow
def test_two_ranks_zero_0_to_2_read_one_preconditioner_and_agree_on_the_estimate(tmp_path):
    """2 gloo ranks: P and Adam's next-step rule read at ZeRO 1-2 (gathered partitions) equal ZeRO 0's
    own state (1e-5 in norm) after the same training; the gradient estimate is identical on both
    ranks at every stage and precision and agrees across fp32 stages (rtol 1e-4); so does the
    lookahead estimate (fp32; rtol 1e-3: a difference of losses)."""
    import json
    import subprocess
    import sys

    from launch import REPO, job_env

    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(Path(REPO) / "tests" / "aioli_grad_worker.py"), str(out)],
                          env=job_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    p0 = np.asarray(res["0-fp32"][0]["p"])
    for case, ranks in res.items():
        assert ranks[0]["estimate"] == ranks[1]["estimate"], case
        assert ranks[0]["p"] == ranks[1]["p"], case
        p = np.asarray(ranks[0]["p"])
        assert np.all(np.isfinite(p)) and np.all(p > 0), case
        if case.endswith("fp32"):
            assert np.linalg.norm(1 / p - 1 / p0) < 1e-5 * np.linalg.norm(1 / p0), case
            np.testing.assert_allclose(ranks[0]["estimate"], res["0-fp32"][0]["estimate"], rtol=1e-4, atol=1e-9)
            assert ranks[0]["lookahead"] == ranks[1]["lookahead"], case
            u, u0 = np.asarray(ranks[0]["update"]), np.asarray(res["0-fp32"][0]["update"])
            assert np.linalg.norm(u - u0) < 1e-5 * np.linalg.norm(u0), case
            np.testing.assert_allclose(ranks[0]["lookahead"], res["0-fp32"][0]["lookahead"], rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("val_batch, want", [(None, 4), (3, 3)])
def test_the_validation_batch_is_the_flag_else_the_micro_batch(monkeypatch, val_batch, want):
    """--aioli-grad-val-batch sizes each domain's validation micro-batch of an estimate (the
    validation half of its cost); without it the training micro-batch size is used. The interval
    defaults to half of --mixing-update-interval."""
    from types import SimpleNamespace

    from megamix.mixing.aioli import AioliConfig
    from megamix.training import aioli_gradient

    monkeypatch.setattr(aioli_gradient, "build_domain_datasets", lambda data, split: [FakeValid(d) for d in range(K)])
    model = Quadratic()
    engine = SimpleNamespace(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    cfg = SimpleNamespace(data=SimpleNamespace(eval_samples_per_domain=None),
                          training=SimpleNamespace(micro_batch_size=4, zero_stage=0),
                          mixing=SimpleNamespace(update_interval=20))
    env = SimpleNamespace(engine=engine, layout=SimpleNamespace(dp_rank=0, dp_size=1, num_domains=K),
                          device=torch.device("cpu"), cfg=cfg)
    est = aioli_gradient.gradient_signal(env, AioliConfig(estimator="gradient", grad_val_batch=val_batch))
    tokens, labels, mask = est.validation.batch(0, 1, torch.device("cpu"))
    assert tokens.shape == (want, SEQ) and est.mbs == 4  # the training half still regroups by micro-batch
    assert est.interval == 10  # no --aioli-grad-interval: two estimates a round of 20 steps
    assert torch.equal(labels[0], torch.tensor(FakeValid(0)[want % 5]["labels"]))  # estimate 1 starts at B
