"""Summaries and the paper-style markdown table of benchmarks/mixing_quality.py.

Every method is compared with stratified sampling on the same seed (a paired difference of
average test perplexity; negative is better). A cell gives the mean difference, its
standard deviation over seeds, the 95 % interval of the mean (t distribution, n − 1
degrees of freedom) and n. "Better than stratified" counts the settings whose interval lies
wholly below 0, and, separately, those whose mean is below 0 (the plain sign count).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

HEADROOM_TILTS = ("p0.45", "p0.55")
"""Static tilts Aioli can reach on 2 domains in the paper profile (reset, η = 0.2: p ∈ [0.45, 0.55])."""


def paired_stats(diffs: list[float], level: float = 0.95) -> dict:
    """Mean, sample standard deviation and the t interval of the mean of paired differences."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "lo": None, "hi": None}
    mean = float(d.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "lo": None, "hi": None}
    std = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


METRICS = {"avg_test_ppl": ("average test perplexity", 2), "avg_test_loss": ("average test loss", 4)}
"""Metrics a table can be made of: record key -> (name, decimals)."""


def summarize(records: list[dict], settings: list[str], methods: list[str], metric: str = "avg_test_ppl") -> dict:
    """Per setting and method: the metric (mean, std over seeds) and its paired-difference statistics.

    ``metric``: a key of :data:`METRICS` — the paper's average test perplexity, or the average
    test loss (the mean over domains of log perplexity: the objective Aioli's law optimises).
    """
    out: dict = {}
    for s in settings:
        base = {r["seed"]: r[metric] for r in records if r["setting"] == s and r["method"] == "stratified"}
        out[s] = {}
        for m in methods:
            runs = [r for r in records if r["setting"] == s and r["method"] == m]
            value = np.array([r[metric] for r in runs])
            diff = paired_stats([r[metric] - base[r["seed"]] for r in runs if r["seed"] in base])
            out[s][m] = {
                "seeds": len(runs),
                "metric": metric,
                "mean": float(value.mean()) if len(value) else None,
                "std": float(value.std(ddof=1)) if len(value) > 1 else None,
                "diff": diff,
                "diff_mean": diff["mean"],
                "diff_std": diff["std"],
                "extra_steps": int(np.mean([r["extra_steps"] for r in runs])) if runs else 0,
            }
    return out


def _cell(e: dict, method: str, planned: int) -> str:
    if planned == 0:
        return "n/a"
    if e["seeds"] == 0:
        return f"not run (0/{planned})"
    dp = METRICS[e["metric"]][1]
    of = f"n={e['seeds']}" + (f"/{planned}" if e["seeds"] < planned else "")
    if method == "stratified":
        std = "" if e["std"] is None else f" ± {e['std']:.{dp}f}"
        return f"{e['mean']:.{dp}f}{std} ({of})"
    d = e["diff"]
    if d["n"] == 0:
        return f"no stratified pair ({of})"
    if d["std"] is None:
        return f"{d['mean']:+.{dp}f} ({of})"
    return f"{d['mean']:+.{dp}f} ± {d['std']:.{dp}f} [{d['lo']:+.{dp}f}, {d['hi']:+.{dp}f}] ({of})"


def markdown_table(summary: dict, settings: list[str], methods: list[str],
                   planned: dict | None = None) -> str:
    """Stratified as the absolute metric; every other method as its paired difference to it.

    ``planned[setting][method]`` is the number of seeds meant to run (0: not applicable there);
    cells with fewer finished seeds say so, so a partial table is honest about what has run.
    """
    head = ("| method | " + " | ".join(settings)
            + " | better than stratified (95 % interval < 0) | mean < 0 | extra steps (mean) |")
    lines = [head, "|" + "---|" * (len(settings) + 4)]
    for m in methods:
        cells, below, sign, ran, extra = [], 0, 0, 0, []
        for s in settings:
            e = summary[s][m]
            want = (planned or {}).get(s, {}).get(m, e["seeds"] or 1)
            cells.append(_cell(e, m, want))
            if e["seeds"]:
                extra.append(e["extra_steps"])
            d = e["diff"]
            if m != "stratified" and d["n"]:
                ran += 1
                below += d["hi"] is not None and d["hi"] < 0
                sign += d["mean"] < 0
        won = ("—", "—") if m == "stratified" else (f"{below}/{ran}", f"{sign}/{ran}")
        mean_extra = int(np.mean(extra)) if extra else 0
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {won[0]} | {won[1]} | {mean_extra} |")
    return "\n".join(lines)


def headroom_notes(summary: dict, settings: list[str]) -> list[str]:
    """Per setting with headroom rows: does any static tilt Aioli can reach beat stratified?"""
    notes = []
    for s in settings:
        tilts = {m: summary[s][m]["diff"] for m in HEADROOM_TILTS if m in summary[s] and summary[s][m]["diff"]["n"]}
        if not tilts:
            continue
        best = min(tilts, key=lambda m: tilts[m]["mean"])
        d = tilts[best]
        if any(t["hi"] is not None and t["hi"] < 0 for t in tilts.values()):
            verdict = "a reachable tilt beats stratified (interval below 0): there is headroom for Aioli"
        elif d["mean"] < 0:
            verdict = "a reachable tilt is better on average but within noise: headroom unresolved"
        else:
            verdict = "no reachable tilt beats stratified, so Aioli (p within [0.45, 0.55] here) cannot either"
        grid = summary[s].get("grid", {}).get("diff", {"n": 0})
        gtxt = f"; the grid's best point: {grid['mean']:+.2f}" if grid["n"] else ""
        notes.append(f"- {s}: best reachable tilt {best} {d['mean']:+.2f} (n={d['n']}){gtxt} — {verdict}.")
    return notes


def per_seed_table(records: list[dict], setting: str, methods: list[str], metric: str = "avg_test_ppl") -> str:
    """One setting's runs seed by seed: stratified's metric, every other method's paired difference.

    The spread behind each cell of :func:`markdown_table`, so that a reader can see whether a mean
    comes from every seed or from one; "—" where a run has not finished (or has no stratified pair).
    """
    dp = METRICS[metric][1]
    runs = {(r["method"], r["seed"]): r[metric] for r in records if r["setting"] == setting}
    seeds = sorted({s for (m, s) in runs if m in methods})
    lines = ["| seed | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for seed in seeds:
        base = runs.get(("stratified", seed))
        cells = []
        for m in methods:
            v = runs.get((m, seed))
            if v is None or (m != "stratified" and base is None):
                cells.append("—")
            else:
                cells.append(f"{v:.{dp}f}" if m == "stratified" else f"{v - base:+.{dp}f}")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mixture_table(records: list[dict], setting: str, domains: list[str], methods: list[str]) -> str:
    """The data each row trained on: per domain, the step-weighted mean proportion of its runs
    (``mean_weights``, probe phases included), averaged over its seeds."""
    lines = ["| method | seeds | " + " | ".join(domains) + " |", "|" + "---|" * (len(domains) + 2)]
    for m in methods:
        mixes = [r["mean_weights"] for r in records
                 if r["setting"] == setting and r["method"] == m and r.get("mean_weights")]
        if mixes:
            means = [float(np.mean([mix.get(d, 0.0) for mix in mixes])) for d in domains]
            lines.append(f"| {m} | {len(mixes)} | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    return "\n".join(lines)
