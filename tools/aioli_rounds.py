#!/usr/bin/env python
"""What moved Aioli's mixture: per round, p and the direction of the EG step, from metrics.jsonl.

Each completed ``aioli_round`` record holds the smoothed matrix E and, under
``--aioli-objective perplexity``, the row weights w; the EG step moves p along
g = w @ E (the column sums of E under the loss objective, w = 1). Only g's centred part
g_j − mean(g) moves p, so that is what is printed per round, beside p before and after
the step and the row weights.

The summary tells a consistent direction from noise: for each domain, the mean of the
centred direction over the rounds, its standard deviation and t = mean / (sd / √n). The
last round is left out of those (``--all-rounds`` keeps it): with the probe-free
estimators its step comes after the last training step. The mixture figures (step-weighted
mean, range, last) are those of the training phases as run (the ``phase`` events, probes and
evaluations left out), so a step that never trained does not count.

  python tools/aioli_rounds.py RUN_DIR [RUN_DIR ...] [--rounds] [--all-rounds]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megamix.fileio import read_jsonl  # noqa: E402
from megamix.mixing.law import perplexity_weights  # noqa: E402


def read_run(path: str) -> tuple[list[dict], list[dict]]:
    """(completed aioli_round records, training phases) of a run directory or a metrics.jsonl.

    Skipped rounds are left out; a training phase is a ``phase`` event of kind train or
    prior with steps > 0.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    try:
        events = read_jsonl(path)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from None
    rounds = [e for e in events if e.get("event") == "aioli_round" and "skipped" not in e]
    if not rounds:
        raise SystemExit(f"{path}: no completed aioli_round record (not an Aioli run, or no round finished)")
    phases = [e for e in events if e.get("event") == "phase" and e.get("kind") in ("train", "prior")
              and e.get("steps", 0) > 0]
    return rounds, phases


def direction(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(row weights w, centred EG direction g − mean g) of one round's record."""
    e = np.asarray(record["E"], dtype=np.float64)
    if record.get("objective") == "perplexity":
        w = np.asarray(record.get("objective_weights") or perplexity_weights(record["objective_losses"]))
    else:
        w = np.ones(len(e))
    g = w @ e
    return w, g - g.mean()


def summarize(rounds: list[dict], phases: list[dict], all_rounds: bool = False) -> dict:
    """Per-domain mixture as trained (step-weighted mean, range, last phase) and direction statistics."""
    domains = rounds[0]["domains"]
    if phases:
        p = np.array([[ph["weights"][d] for d in domains] for ph in phases], dtype=np.float64)
        steps = np.array([ph["steps"] for ph in phases], dtype=np.float64)
    else:  # no phase events: the mixture before each round's step
        p = np.array([r["weights_before"] for r in rounds], dtype=np.float64)
        steps = np.ones(len(p))
    used = rounds if all_rounds or len(rounds) < 3 else rounds[:-1]
    d = np.array([direction(r)[1] for r in used])
    n = len(d)
    sd = d.std(axis=0, ddof=1) if n > 1 else np.full(len(domains), math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d.mean(axis=0) / (sd / math.sqrt(n))
    return {"domains": domains, "rounds": len(rounds), "direction_rounds": n,
            "p_mean": (steps @ p / steps.sum()).tolist(), "p_last": p[-1].tolist(),
            "p_min": p.min(axis=0).tolist(), "p_max": p.max(axis=0).tolist(),
            "direction_mean": d.mean(axis=0).tolist(), "direction_sd": sd.tolist(), "direction_t": t.tolist()}


def _fmt(xs, spec: str = ".3f") -> str:
    return " ".join(format(x, spec) for x in xs)


def round_lines(rounds: list[dict]) -> list[str]:
    """One line per round: step, p before the step, row weights, centred direction, p after."""
    lines = []
    for r in rounds:
        w, d = direction(r)
        lines.append(f"  round {r['round']:>2} step {r['step']:>5}  p {_fmt(r['weights_before'])}  w {_fmt(w)}  "
                     f"g-mean {_fmt(d, '+.4f')}  -> {_fmt(r['weights'])}")
    return lines


def report(path: str, summary: dict) -> str:
    """The summary of one run as text, one line per domain."""
    out = [f"{path}: {summary['rounds']} rounds (direction over {summary['direction_rounds']})"]
    for i, name in enumerate(summary["domains"]):
        out.append(f"  {name:<16} trained p: mean {summary['p_mean'][i]:.3f}  last {summary['p_last'][i]:.3f}"
                   f"  range {summary['p_min'][i]:.3f}-{summary['p_max'][i]:.3f}  direction "
                   f"{summary['direction_mean'][i]:+.4f} +- {summary['direction_sd'][i]:.4f}"
                   f"  t {summary['direction_t'][i]:+.2f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """Print each run's rounds (with --rounds) and summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories or metrics.jsonl files")
    ap.add_argument("--rounds", action="store_true", help="also print every round")
    ap.add_argument("--all-rounds", action="store_true", help="keep the last round in the direction statistics")
    args = ap.parse_args(argv)
    for path in args.runs:
        rounds, phases = read_run(path)
        if args.rounds:
            print("\n".join(round_lines(rounds)))
        print(report(path, summarize(rounds, phases, args.all_rounds)))


if __name__ == "__main__":
    main()
