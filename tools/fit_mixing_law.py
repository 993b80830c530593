#!/usr/bin/env python
"""Offline mixing tools over finished runs: grid search, Data Mixing Laws, Skill-It graph.

Each run directory holds ``config.json`` ({"domains": [...], "mixing": {"mixture_weights":
[...] | null, "method": ...}}), ``metrics.jsonl`` ("eval" events with per-domain
``val_loss``) and, after the final report, ``test_results.json``.

  --method grid           best observed average loss among the runs → weights file
  --method dml            fit L_i(p) = c_i + b_i exp(Σ_j t_ij p_j) per domain, minimise the
                          mean predicted loss over the simplex → weights file
  --method skillit-graph  from K single-domain runs: G[i, j] = (L_j(first) − L_j(last)) /
                          L_j(first) of the run on domain i (off-diagonal 1 → 0.5) → graph JSON

The output records how many training steps the runs cost (``extra_steps``), so methods
can be compared at equal total compute.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megamix.mixing import law  # noqa: E402
from megamix.fileio import atomic_write_json, read_json, read_jsonl  # noqa: E402
from megamix.mixing.weights_file import write_weights_file  # noqa: E402


class RunError(ValueError):
    """A run directory is missing something or holds something unexpected."""


def read_events(path: str, kind: str) -> list[dict]:
    """All events of ``kind`` in a metrics.jsonl, in file order."""
    return [ev for ev in read_jsonl(path) if ev.get("event") == kind]


def _named(values: dict, domains: list[str], where: str) -> np.ndarray:
    """A {domain: value} mapping as an array in ``domains`` order."""
    missing = [d for d in domains if d not in values]
    if missing:
        raise RunError(f"{where}: no value for domains {missing}")
    return np.asarray([float(values[d]) for d in domains])


def run_weights(run: str, config: dict, domains: list[str]) -> np.ndarray:
    """The static mixture a run trained on (uniform for a stratified run)."""
    mixing = config.get("mixing") or {}
    w = mixing.get("mixture_weights")
    if w is None:
        if mixing.get("method", "stratified") == "stratified":
            return np.full(len(domains), 1.0 / len(domains))
        raise RunError(f"{run}/config.json: mixing.mixture_weights is null and the method is "
                       f"{mixing.get('method')!r}; expected a static or stratified run")
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (len(domains),) or np.any(w < 0) or w.sum() <= 0:
        raise RunError(f"{run}/config.json: mixing.mixture_weights must be {len(domains)} non-negative values")
    return w / w.sum()


def load_run(run: str, loss: str = "val") -> dict:
    """A run's domains, mixture, first/last per-domain losses and steps trained."""
    config = read_json(os.path.join(run, "config.json"), os.path.join(run, "config.json"))
    domains = config.get("domains")
    if not isinstance(domains, list) or not domains:
        raise RunError(f"{run}/config.json: expected a 'domains' list")
    metrics = os.path.join(run, "metrics.jsonl")
    evals = read_events(metrics, "eval")
    if loss == "test":
        res = read_json(os.path.join(run, "test_results.json"), os.path.join(run, "test_results.json"))
        last = _named(res.get("test_loss", {}), domains, f"{run}/test_results.json test_loss")
    else:
        if not evals:
            raise RunError(f"{metrics}: no 'eval' events (the run never evaluated)")
        last = _named(evals[-1]["val_loss"], domains, f"{metrics} last eval")
    first = _named(evals[0]["val_loss"], domains, f"{metrics} first eval") if evals else None
    steps = [ev.get("step", 0) for ev in read_events(metrics, "train")] + [ev.get("step", 0) for ev in evals]
    return {"dir": run, "domains": domains, "weights": run_weights(run, config, domains),
            "first": first, "last": last, "steps": int(max(steps, default=0))}


def load_runs(dirs: list[str], loss: str) -> list[dict]:
    """All runs, re-ordered to the first run's domain order (same domain set required)."""
    runs = [load_run(d, loss) for d in dirs]
    ref = runs[0]["domains"]
    for r in runs[1:]:
        if sorted(r["domains"]) != sorted(ref):
            raise RunError(f"{r['dir']}: domains {r['domains']} differ from {runs[0]['dir']}'s {ref}")
        idx = [r["domains"].index(d) for d in ref]
        for key in ("weights", "first", "last"):
            if r[key] is not None:
                r[key] = r[key][idx]
        r["domains"] = ref
    return runs


def fit_grid(runs: list[dict]) -> tuple[np.ndarray, dict]:
    """The mixture of the run with the lowest average loss."""
    avg = [float(np.mean(r["last"])) for r in runs]
    best = int(np.argmin(avg))
    return runs[best]["weights"], {"best_run": runs[best]["dir"], "avg_loss": avg[best]}


def fit_dml(runs: list[dict], seed: int) -> tuple[np.ndarray, dict]:
    """Fit the DML law per domain and minimise the mean predicted loss over the simplex."""
    k = len(runs[0]["domains"])
    if len(runs) < k + 2:
        raise RunError(f"--method dml: the law has K+2 = {k + 2} parameters per domain; "
                       f"give at least that many runs (got {len(runs)})")
    p = np.stack([r["weights"] for r in runs])
    loss = np.stack([r["last"] for r in runs])
    c, b, t = law.fit_log_linear(p, loss, seed=seed)
    weights = law.minimize_on_simplex(lambda x: float(np.mean(law.dml_loss(x, c, b, t))), k, seed=seed)
    pred = np.stack([law.dml_loss(x, c, b, t) for x in p])
    return weights, {"c": c.tolist(), "b": b.tolist(), "t": t.tolist(),
                     "predicted_avg_loss": float(np.mean(law.dml_loss(weights, c, b, t))),
                     "fit_rmse": float(np.sqrt(np.mean((pred - loss) ** 2)))}


def fit_skill_graph(runs: list[dict]) -> np.ndarray:
    """G[i, j] from K single-domain runs (one run trained only on each domain i)."""
    domains = runs[0]["domains"]
    k = len(domains)
    g = np.full((k, k), np.nan)
    for r in runs:
        i = int(np.argmax(r["weights"]))
        if r["weights"][i] < 0.999:
            raise RunError(f"{r['dir']}: not a single-domain run (weights {r['weights'].tolist()})")
        if not np.all(np.isnan(g[i])):
            raise RunError(f"{r['dir']}: a second run on domain {domains[i]!r}")
        if r["first"] is None:
            raise RunError(f"{r['dir']}/metrics.jsonl: no 'eval' events")
        g[i] = (r["first"] - r["last"]) / r["first"]
    missing = [domains[i] for i in range(k) if np.all(np.isnan(g[i]))]
    if missing:
        raise RunError(f"--method skillit-graph: no single-domain run for {missing}")
    off = ~np.eye(k, dtype=bool) & np.isclose(g, 1.0)
    g[off] = 0.5
    return g


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories")
    ap.add_argument("--method", required=True, choices=("grid", "dml", "skillit-graph"))
    ap.add_argument("--out", required=True, help="output weights file (graph JSON for skillit-graph)")
    ap.add_argument("--loss", choices=("val", "test"), default="val",
                    help="last eval's validation loss (default) or test_results.json's test loss")
    ap.add_argument("--seed", type=int, default=0, help="seed of the DML fit and simplex search")
    args = ap.parse_args(argv)
    try:
        runs = load_runs(args.runs, "val" if args.method == "skillit-graph" else args.loss)
        meta = {"method": args.method, "runs": [r["dir"] for r in runs],
                "extra_steps": int(sum(r["steps"] for r in runs))}
        domains = runs[0]["domains"]
        if args.method == "skillit-graph":
            atomic_write_json(args.out, {"domains": domains, "graph": fit_skill_graph(runs).tolist(), **meta})
        else:
            weights, info = fit_grid(runs) if args.method == "grid" else fit_dml(runs, args.seed)
            write_weights_file(args.out, domains, weights, {**meta, **info})
    except (ValueError, FileNotFoundError) as err:
        print(f"fit_mixing_law: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
