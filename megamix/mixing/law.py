"""The mixing-law math shared by every method: laws, the EG step, solving and fitting A.

Notation (MIXING.md): K domains, p in the simplex, A[i, j] = how much training on
domain j lowers the loss on domain i, Q the probe matrix whose row j is the mixture q_j.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.optimize import least_squares, minimize


def eg_step(p: np.ndarray, grad: np.ndarray, eta: float) -> np.ndarray:
    """One exponentiated-gradient step: p' ∝ p · exp(eta · grad), on the simplex."""
    p = np.asarray(p, dtype=np.float64)
    z = np.log(np.maximum(p, 1e-300)) + eta * np.asarray(grad, dtype=np.float64)
    z = z - np.max(z)
    q = np.exp(z) * (p > 0)
    return q / q.sum()


def perplexity_weights(losses: np.ndarray) -> np.ndarray:
    """Row weights w_i = exp(L_i) / mean_j exp(L_j): ∂ Σ_i exp(L_i) / ∂L_i, scaled to mean 1.

    Under the law L_i ← L_i − Σ_j A[i, j] p_j, the direction that lowers the average
    perplexity fastest is Σ_i w_i A[i, ·]; w = 1 (equal losses) is the average loss's direction.
    """
    z = np.asarray(losses, dtype=np.float64)
    e = np.exp(z - np.max(z))
    return e / e.mean()


def softmax(z: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a vector."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - np.max(z))
    return e / e.sum()


def linear_dynamic_predict(loss: np.ndarray, a: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Linear dynamic law: the losses after one round at p, L − A p."""
    return np.asarray(loss, dtype=np.float64) - np.asarray(a) @ np.asarray(p)


def log_linear_loss(p: np.ndarray, c: np.ndarray, b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Static log-linear law: L_i(p) = c_i + b_i · exp(−Σ_j A[i, j] p_j)."""
    return c + b * np.exp(-(np.asarray(a) @ np.asarray(p)))


def dml_loss(p: np.ndarray, c: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Data Mixing Laws' convention: L_i(p) = c_i + b_i · exp(Σ_j t_ij p_j)."""
    return c + b * np.exp(np.asarray(t) @ np.asarray(p))


def probe_mixtures(k: int, f: float) -> np.ndarray:
    """Q (K×K): row j is the probe mixture q_j with q_j[j] = f, the rest (1 − f)/(K − 1)."""
    if k < 2:
        raise ValueError(f"probe_mixtures: need at least 2 domains, got {k}")
    if not (1.0 / k < f <= 1.0):
        raise ValueError(f"one-hot factor f must be in (1/K, 1] = ({1.0 / k:.4g}, 1], got {f}")
    q = np.full((k, k), (1.0 - f) / (k - 1))
    np.fill_diagonal(q, f)
    return q


def solve_a(b: np.ndarray, q: np.ndarray, diagonal: bool = False, f: float | None = None) -> np.ndarray:
    """A from B = A Qᵀ: A = B (Qᵀ)⁻¹; A = B when f = 1; diag(B[j, j] / f) when diagonal."""
    b = np.asarray(b, dtype=np.float64)
    if diagonal:
        scale = float(f) if f is not None else float(q[0, 0])
        return np.diag(np.diag(b) / scale)
    if f is not None and f == 1.0:
        return b.copy()
    return np.linalg.solve(np.asarray(q, dtype=np.float64), b.T).T


def normalize_a(a: np.ndarray) -> np.ndarray:
    """Shift A to be non-negative when its minimum is negative, then scale its entries to sum 1."""
    a = np.asarray(a, dtype=np.float64).copy()
    lo = float(a.min())
    if lo < 0:
        a = a - lo
    total = float(a.sum())
    if total <= 0 or not np.isfinite(total):
        return np.zeros_like(a)
    return a / total


def ema(e_prev: np.ndarray | None, a: np.ndarray, gamma: float | None) -> np.ndarray:
    """E = A at first (or without γ), else (1 − γ) A + γ E_prev."""
    a = np.asarray(a, dtype=np.float64)
    if e_prev is None or gamma is None:
        return a.copy()
    return (1.0 - gamma) * a + gamma * np.asarray(e_prev, dtype=np.float64)


def fit_linear_dynamic(p: np.ndarray, dl: np.ndarray) -> np.ndarray:
    """Least-squares A from n observations: dl[n, i] ≈ Σ_j A[i, j] p[n, j] (dl = loss decrease)."""
    p = np.asarray(p, dtype=np.float64)
    dl = np.asarray(dl, dtype=np.float64)
    if p.ndim != 2 or dl.shape != p.shape:
        raise ValueError(f"fit_linear_dynamic: P and dL must both be (n, K); got {p.shape} and {dl.shape}")
    x, *_ = np.linalg.lstsq(p, dl, rcond=None)
    return x.T


def _fit_one_domain(p: np.ndarray, y: np.ndarray, rng: np.random.Generator, starts: int) -> np.ndarray:
    """(c, b, t_1..t_K) for one domain of the DML law, best of several seeded starts."""
    k = p.shape[1]
    lo_y = float(y.min())
    lower = np.concatenate([[0.0, 1e-8], np.full(k, -30.0)])
    upper = np.concatenate([[max(lo_y, 1e-6), np.inf], np.full(k, 30.0)])
    best = None
    for s in range(starts):
        c0 = 0.5 * lo_y if s == 0 else rng.uniform(0.0, 0.95) * lo_y
        b0 = max(float(y.mean()) - c0, 1e-3)
        t0 = np.zeros(k) if s == 0 else rng.normal(0.0, 0.5, k)
        x0 = np.clip(np.concatenate([[c0, b0], t0]), lower + 1e-9, np.minimum(upper, 1e12) - 1e-9)
        res = least_squares(lambda x: x[0] + x[1] * np.exp(p @ x[2:]) - y, x0,
                            bounds=(lower, upper), max_nfev=2000)
        if best is None or res.cost < best.cost:
            best = res
    return best.x


def fit_log_linear(p: np.ndarray, loss: np.ndarray, seed: int = 0,
                   starts: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit DML's L_i(p) = c_i + b_i · exp(Σ_j T[i, j] p_j) per domain; returns (c, b, T)."""
    p = np.asarray(p, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    if p.ndim != 2 or loss.shape != p.shape:
        raise ValueError(f"fit_log_linear: P and L must both be (n, K); got {p.shape} and {loss.shape}")
    rng = np.random.default_rng(seed)
    fits = [_fit_one_domain(p, loss[:, i], rng, starts) for i in range(p.shape[1])]
    x = np.stack(fits)
    return x[:, 0], x[:, 1], x[:, 2:]


def minimize_on_simplex(fn: Callable[[np.ndarray], float], k: int, seed: int = 0,
                        starts: int = 8) -> np.ndarray:
    """The minimiser of ``fn`` over the simplex (SLSQP from uniform and seeded Dirichlet starts)."""
    rng = np.random.default_rng(seed)
    inits = [np.full(k, 1.0 / k)] + [rng.dirichlet(np.ones(k)) for _ in range(starts - 1)]
    cons = ({"type": "eq", "fun": lambda x: np.sum(x) - 1.0},)
    best_x, best_v = None, np.inf
    for x0 in inits:
        res = minimize(fn, x0, method="SLSQP", bounds=[(0.0, 1.0)] * k, constraints=cons,
                       options={"maxiter": 500, "ftol": 1e-12})
        x = np.clip(res.x, 0.0, None)
        x = x / x.sum()
        v = float(fn(x))
        if v < best_v:
            best_x, best_v = x, v
    return best_x
