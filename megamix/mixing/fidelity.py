"""The law-fidelity report: how well a method's own A agrees with one fitted from probes.

MIXING.md ("How a method is judged"): from a checkpoint, train short probes on several
mixtures p_n, measure each probe's per-domain loss decrease dL_n, fit A* by least squares
under the linear dynamic law (dL_n ≈ A* p_n), and compare A* with the A the method used.
The comparison is on column sums (Σ_i A[i, j] is the gradient the exponentiated-gradient
step follows): cosine similarity and Spearman rank correlation; when the method has a
full K×K matrix its entrywise cosine is reported too.

What counts as a method's "A" is the method's own business (``MethodSpec.law_estimate``,
read from its metrics records): a K×K matrix, or a K-vector standing in for the column
sums when the method has no matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from megamix.mixing import law
from megamix.mixing.registry import method_names, method_spec


@dataclass
class FidelityConfig:
    """Probe design of a law-fidelity report."""

    num_probes: int | None = None
    """Probe mixtures (the K one-hot-ish q_j first, then seeded Dirichlet draws); at least K.
    None: ``default_num_probes(K)``, resolved where K is known (``probe_design``)."""
    probe_steps: int = 10
    """Optimizer steps trained on each probe mixture, from the checkpoint weights."""
    one_hot_factor: float = 0.75
    """Weight f of q_j on its own domain, in (1/K, 1]."""
    seed: int = 0
    """Seed of the Dirichlet probe mixtures and of the probes' training."""

    def __post_init__(self) -> None:
        if self.num_probes is not None and self.num_probes < 2:
            raise ValueError(f"--num-probes must be >= 2 (at least K), got {self.num_probes}")
        if self.probe_steps < 1:
            raise ValueError(f"--probe-steps must be >= 1, got {self.probe_steps}")
        if not (0.0 < self.one_hot_factor <= 1.0):
            raise ValueError(f"--one-hot-factor must be in (1/K, 1], got {self.one_hot_factor}")


def probe_design(num_domains: int, cfg: FidelityConfig) -> np.ndarray:
    """The (n, K) probe mixtures: q_1..q_K, then seeded Dirichlet(1) draws up to ``num_probes``."""
    k = num_domains
    n = default_num_probes(k) if cfg.num_probes is None else cfg.num_probes
    if n < k:
        raise ValueError(f"--num-probes {n}: the fit of A* needs at least K = {k} probes")
    q = law.probe_mixtures(k, cfg.one_hot_factor)
    rng = np.random.default_rng([cfg.seed, 0xF1DE])
    extra = rng.dirichlet(np.ones(k), size=n - k)
    return np.concatenate([q, extra.reshape(-1, k)], axis=0)


def fit_a_star(p: np.ndarray, dl: np.ndarray) -> tuple[np.ndarray, float]:
    """A* by least squares under the linear dynamic law, and the law's R² on the probes."""
    a = law.fit_linear_dynamic(p, dl)
    pred = np.asarray(p) @ a.T
    dl = np.asarray(dl, dtype=np.float64)
    ss_res = float(np.sum((dl - pred) ** 2))
    ss_tot = float(np.sum((dl - dl.mean(axis=0)) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return a, r2


def default_num_probes(num_domains: int) -> int:
    """Probes of a report when the user sets none: K q_j plus max(60, 5K) held out.

    Measured (docs/results.md, section 18): with 7–11 held-out probes two independent
    judges (``--seed``) at K = 3 and 7 disagreed (column-sum cosine −0.10 and 0.06); with 30
    at K = 3 still 0.71; with 60 at K = 2 and 3 they agree (0.995, 0.976), with 35 at K = 7
    (0.95). A judge is only as good as its agreement with one from another seed.
    """
    return num_domains + max(60, 5 * num_domains)


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    """Cosine similarity of two vectors (flattened); NaN when either is zero."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0 or ny == 0:
        return float("nan")
    return float(x @ y / (nx * ny))


def centred_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """Cosine of two vectors less their means: the part of column sums that EG's update sees.

    p ∝ p ⊙ exp(η · column sums) does not move when every column sum shifts by the same
    amount, and a judge's column sums can carry such a shift that an estimator's lack
    (docs/results.md section 19). At K = 2 it is ±1: whether the larger column agrees.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    return cosine(x - x.mean(), y - y.mean())


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two vectors; NaN when either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)


SCORES = ("cosine_column_sums", "centred_cosine_column_sums", "spearman_column_sums", "cosine_matrix")
"""The agreement scores ``agreement`` returns, in the order reports print them."""


def agreement(method: np.ndarray, a_star: np.ndarray) -> dict:
    """Cosine, centred cosine and Spearman of column sums (and entrywise cosine when ``method`` is a matrix)."""
    method = np.asarray(method, dtype=np.float64)
    star_cols = np.asarray(a_star).sum(axis=0)
    cols = method.sum(axis=0) if method.ndim == 2 else method
    if cols.shape != star_cols.shape:
        raise ValueError(f"method A has {cols.shape[0]} columns, A* has {star_cols.shape[0]}")
    out = {"method_column_sums": cols.tolist(), "a_star_column_sums": star_cols.tolist(),
           "cosine_column_sums": cosine(cols, star_cols), "centred_cosine_column_sums": centred_cosine(cols, star_cols),
           "spearman_column_sums": spearman(cols, star_cols),
           "cosine_matrix": cosine(method, a_star) if method.ndim == 2 else None}
    return out


# --------------------------------------------------------------- the method's A
def method_a(method: str, events: list[dict], options=None, key: str | None = None) -> tuple[np.ndarray, str]:
    """The method's A (a K×K matrix, or a K-vector of column sums) and a description of its source.

    ``options`` is the run's method config (``MixingConfig.options``); each method reads its
    own records (``MethodSpec.law_estimate``).
    """
    spec = method_spec(method)
    if spec.law_estimate is None:
        learns = [name for name in method_names() if method_spec(name).law_estimate is not None]
        raise ValueError(f"--mixing-method {method} learns no A (nothing to compare); expected one of "
                         f"{', '.join(learns)}")
    return spec.law_estimate(events, options, key)


def format_table(domains: list[str], report: dict) -> str:
    """The report as a small text table (column sums per domain, then the agreement scores)."""
    lines = [f"{'domain':<14}{'method Σ_i A':>16}{'probe Σ_i A*':>16}", "-" * 46]
    for d, m, s in zip(domains, report["method_column_sums"], report["a_star_column_sums"]):
        lines.append(f"{d:<14}{m:>16.5g}{s:>16.5g}")
    lines.append("-" * 46)
    for name in (*SCORES, "law_r2"):
        v = report.get(name)
        lines.append(f"{name:<30}{'n/a' if v is None else format(v, '.4f'):>16}")
    return "\n".join(lines)
