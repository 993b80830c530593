"""Where Aioli's gap to stratified comes from at CPU scale: one setting, one knob at a time.

Trains the benchmark's recipe (benchmarks/quality_runs.QualitySpec, the same model, steps
and seeds as benchmarks/mixing_quality.py) with Aioli variants that each change one
hyperparameter — round length U, probe length s, probe weight f, step size η, the
``reset`` update with an EMA on A, the loss source and the eval-set size — plus the cheapest
probes with a larger η, and prints each
variant's average test perplexity as a paired difference to stratified (same seed), with
the share of training steps spent in probes. η ≈ 0 keeps the proportions at the start
mixture, so its row is the cost of probing alone.

Runs share the directory layout of mixing_quality.py (``<out>/<setting>/...``), so its
finished stratified runs are reused, and every run is skipped once finished.

  python benchmarks/aioli_ablation.py --corpus data/corpus --setting all-7 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.mixing_quality import SETTINGS  # noqa: E402
from benchmarks.quality_runs import QualitySpec, train  # noqa: E402

VARIANTS = {
    "default": [],
    "eta~0 (probes only)": ["--aioli-eta", "1e-9"],
    "U=100": ["--mixing-update-interval", "100"],
    "s=2": ["--aioli-lp-steps", "2"],
    "f=0.5": ["--aioli-one-hot-factor", "0.5"],
    "reset, ema 0.1": ["--aioli-update", "reset", "--aioli-ema", "0.1"],
    "loss source train": ["--aioli-loss-source", "train"],
    "eval 64/domain": ["--eval-samples-per-domain", "64"],
    "s=2, f=0.5": ["--aioli-lp-steps", "2", "--aioli-one-hot-factor", "0.5"],
    "s=2, f=0.5, eta=4": ["--aioli-lp-steps", "2", "--aioli-one-hot-factor", "0.5", "--aioli-eta", "4"],
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "=.-" else "_" for c in name).strip("_")


def probe_share(run_dir: str) -> float:
    """Fraction of the run's training steps spent in probe phases (from its metrics.jsonl)."""
    steps = {"probe": 0, "all": 0}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            event = json.loads(line)
            if event["event"] == "phase":
                steps["all"] += event["steps"]
                steps["probe"] += event["steps"] if event["kind"] == "probe" else 0
    return steps["probe"] / max(steps["all"], 1)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--corpus", required=True, help="directory of tokenized domains and tokenizer.model")
    p.add_argument("--setting", choices=sorted(SETTINGS), default="all-7")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--variants", default=None, help=f"comma list (default all: {', '.join(VARIANTS)})")
    p.add_argument("--out", default="runs/mixing_quality")
    return p.parse_args()


def main() -> int:
    """Run (or reuse) stratified and every chosen variant; print and write the table."""
    args = _parse()
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
    spec = QualitySpec(corpus=args.corpus, out=args.out)
    domains, root = SETTINGS[args.setting], os.path.join(args.out, args.setting)
    print(spec.describe(), flush=True)
    t0 = time.time()
    seeds = range(1, args.seeds + 1)
    base = {s: train(spec, os.path.join(root, "stratified", f"seed{s}", "final"), domains, s,
                     ["--mixing-method", "stratified"], label=f"stratified seed {s}")["avg_test_ppl"] for s in seeds}
    rows = [f"| variant | Δ avg test ppl vs stratified ({args.setting}, {args.seeds} seed(s)) | probe share |",
            "|---|---|---|"]
    for name in names:
        deltas, shares = [], []
        for s in seeds:
            run_dir = os.path.join(root, "ablation", _slug(name), f"seed{s}")
            rec = train(spec, run_dir, domains, s, [*spec.aioli_flags(), *VARIANTS[name]], label=f"{name} seed {s}")
            deltas.append(rec["avg_test_ppl"] - base[s])
            shares.append(probe_share(run_dir))
        spread = f" ± {np.std(deltas, ddof=1):.2f}" if len(deltas) > 1 else ""
        rows.append(f"| {name} | {np.mean(deltas):+.2f}{spread} | {np.mean(shares):.2f} |")
    table = "\n".join(rows)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "ablation.md"), "w") as f:
        f.write(f"stratified avg test ppl: {base}\n\n{table}\n")
    print(f"stratified avg test ppl by seed: {base}\n{table}\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
