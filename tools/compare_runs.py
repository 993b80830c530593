"""Print the per-domain test perplexity of several finished runs side by side.

Usage: python tools/compare_runs.py RUN_DIR [RUN_DIR ...] [--names aioli,stratified] [--markdown]
Each RUN_DIR holds the test_results.json written at the end of pretrain_gpt_mix.py. The
first run is the reference: a last column gives the others' difference to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def load(run_dir: str) -> dict:
    """A run's test_results.json, with an error naming the file when it is missing."""
    path = os.path.join(run_dir, "test_results.json")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: not found (has the run finished its test report?)")
    with open(path) as f:
        return json.load(f)


def _values(result: dict, domains: list[str]) -> list[float]:
    return [result["test_ppl"][d] for d in domains] + [result["avg_test_ppl"], result["worst_test_ppl"]]


def table(results: list[dict], names: list[str], markdown: bool) -> str:
    """Rows: domains, then average and worst; columns: runs' test perplexity (and the difference of two)."""
    domains = results[0]["domains"]
    labels = domains + ["average", "worst"]
    values = [_values(r, domains) for r in results]
    rows = [[label] + [f"{v[i]:.2f}" for v in values] for i, label in enumerate(labels)]
    rows[-1][1:] = [f"{v[-1]:.2f} ({r['worst_domain']})" for v, r in zip(values, results)]
    head = ["test ppl"] + names
    if len(results) == 2:
        head.append(f"{names[1]} - {names[0]}")
        for i, row in enumerate(rows):
            row.append(f"{values[1][i] - values[0][i]:+.2f}")
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def fmt(row: list[str]) -> str:
        return "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths)))

    return "\n".join([fmt(head), "-" * (sum(widths) + 2 * len(widths))] + [fmt(r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--names", default=None, help="comma list of column names (default: directory names)")
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args(argv)
    names = a.names.split(",") if a.names else [os.path.basename(os.path.normpath(r)) for r in a.runs]
    if len(names) != len(a.runs):
        raise SystemExit(f"--names: {len(names)} names for {len(a.runs)} runs")
    results = [load(r) for r in a.runs]
    if any(r["domains"] != results[0]["domains"] for r in results):
        raise SystemExit("the runs were trained on different domains; nothing to compare")
    print(table(results, names, a.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
