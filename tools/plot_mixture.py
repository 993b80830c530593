#!/usr/bin/env python
"""Plot mixture proportions over steps and per-domain validation loss from metrics.jsonl files.

One row per run: left, a stacked area of the sampling proportions (each "phase" event's
weights over [step, step + steps)); right, each domain's validation loss from the
"eval" events. Arguments are run directories or metrics.jsonl paths.
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megamix.fileio import atomic_open, read_jsonl  # noqa: E402


def read_metrics(path: str) -> list[dict]:
    """All events of a metrics.jsonl (a run directory means its metrics.jsonl)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    return read_jsonl(path)


def proportions(events: list[dict]) -> tuple[list[str], list[float], list[list[float]]]:
    """(domains, x, per-domain y) step functions of the phases' weights."""
    phases = [e for e in events if e.get("event") == "phase" and e.get("steps", 0) > 0]
    if not phases:
        return [], [], []
    domains = list(phases[0]["weights"])
    x, ys = [], [[] for _ in domains]
    for ph in phases:
        x += [ph["step"], ph["step"] + ph["steps"]]
        for i, d in enumerate(domains):
            ys[i] += [ph["weights"].get(d, 0.0)] * 2
    return domains, x, ys


def plot_run(ax_mix, ax_loss, events: list[dict], title: str) -> None:
    """Draw one run's proportions and validation curves."""
    domains, x, ys = proportions(events)
    if x:
        ax_mix.stackplot(x, ys, labels=domains, alpha=0.85)
        ax_mix.set_ylim(0, 1)
        ax_mix.legend(loc="upper right", fontsize="small")
    ax_mix.set_title(f"{title}: proportions")
    ax_mix.set_xlabel("step")
    evals = [e for e in events if e.get("event") == "eval"]
    names = list(evals[0]["val_loss"]) if evals else []
    for d in names:
        ax_loss.plot([e["step"] for e in evals], [e["val_loss"][d] for e in evals], marker=".", label=d)
    if names:
        ax_loss.legend(loc="upper right", fontsize="small")
    ax_loss.set_title(f"{title}: validation loss")
    ax_loss.set_xlabel("step")


def plot(paths: list[str], out: str) -> None:
    """Write the PNG for ``paths`` to ``out`` (through a temporary name)."""
    runs = [read_metrics(p) for p in paths]
    fig, axes = plt.subplots(len(runs), 2, figsize=(12, 3.5 * len(runs)), squeeze=False)
    for (ax_mix, ax_loss), events, path in zip(axes, runs, paths):
        plot_run(ax_mix, ax_loss, events, os.path.basename(os.path.normpath(path)))
    fig.tight_layout()
    try:
        with atomic_open(out, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", help="run directories or metrics.jsonl files")
    ap.add_argument("--out", required=True, help="output PNG")
    args = ap.parse_args(argv)
    try:
        plot(args.runs, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"plot_mixture: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
