"""Summaries and the paper-style markdown table of benchmarks/mixing_quality.py."""

from __future__ import annotations

import numpy as np


def summarize(records: list[dict], settings: list[str], methods: list[str]) -> dict:
    """Per setting and method: mean/std of average test perplexity and of its paired difference to stratified."""
    out: dict = {}
    for s in settings:
        base = {r["seed"]: r["avg_test_ppl"] for r in records if r["setting"] == s and r["method"] == "stratified"}
        out[s] = {}
        for m in methods:
            runs = [r for r in records if r["setting"] == s and r["method"] == m]
            ppl = np.array([r["avg_test_ppl"] for r in runs])
            diffs = np.array([r["avg_test_ppl"] - base[r["seed"]] for r in runs if r["seed"] in base])
            out[s][m] = {
                "seeds": len(runs),
                "avg_test_ppl_mean": float(ppl.mean()) if len(ppl) else None,
                "avg_test_ppl_std": float(ppl.std(ddof=1)) if len(ppl) > 1 else 0.0,
                "diff_mean": float(diffs.mean()) if len(diffs) else None,
                "diff_std": float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0,
                "extra_steps": int(np.mean([r["extra_steps"] for r in runs])) if runs else 0,
            }
    return out


def markdown_table(summary: dict, settings: list[str], methods: list[str]) -> str:
    """Stratified as absolute average test perplexity (± std over seeds); every other method as the
    mean paired difference to stratified (± std; negative is better), and how many settings it won."""
    head = "| method | " + " | ".join(settings) + " | better than stratified | extra steps (mean) |"
    lines = [head, "|" + "---|" * (len(settings) + 3)]
    for m in methods:
        cells, wins, extra = [], 0, []
        for s in settings:
            e = summary[s][m]
            extra.append(e["extra_steps"])
            if e["seeds"] == 0:
                cells.append("—")
            elif m == "stratified":
                cells.append(f"{e['avg_test_ppl_mean']:.2f} ± {e['avg_test_ppl_std']:.2f}")
            else:
                cells.append(f"{e['diff_mean']:+.2f} ± {e['diff_std']:.2f}")
                wins += e["diff_mean"] < 0
        won = "—" if m == "stratified" else f"{wins}/{len(settings)}"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {won} | {int(np.mean(extra))} |")
    return "\n".join(lines)
