"""The final per-domain test report: loss, perplexity, their average and the worst domain."""

from __future__ import annotations

import json
import os

import numpy as np

from megamix.fileio import atomic_write_text
from megamix.training.evaluation import perplexity
from megamix.training.metrics import MetricsSink


def test_results(losses: np.ndarray, domains: list[str], iteration: int) -> dict:
    """The report as a JSON-able dict."""
    ppl = perplexity(losses)
    worst = int(np.nanargmax(ppl))
    return {
        "iteration": iteration,
        "domains": list(domains),
        "test_loss": {d: float(v) for d, v in zip(domains, losses)},
        "test_ppl": {d: float(v) for d, v in zip(domains, ppl)},
        "avg_test_loss": float(np.nanmean(losses)),
        "avg_test_ppl": float(np.nanmean(ppl)),
        "worst_domain": domains[worst],
        "worst_test_ppl": float(ppl[worst]),
    }


def format_table(results: dict) -> str:
    """A plain-text table of the report."""
    lines = [f"{'domain':<16} {'test loss':>10} {'test ppl':>10}", "-" * 38]
    for d in results["domains"]:
        lines.append(f"{d:<16} {results['test_loss'][d]:>10.4f} {results['test_ppl'][d]:>10.3f}")
    lines.append("-" * 38)
    lines.append(f"{'average':<16} {results['avg_test_loss']:>10.4f} {results['avg_test_ppl']:>10.3f}")
    lines.append(f"{'worst: ' + results['worst_domain']:<16} {'':>10} {results['worst_test_ppl']:>10.3f}")
    return "\n".join(lines)


def test_report(losses: np.ndarray, domains: list[str], iteration: int, metrics: MetricsSink,
                save_dir: str | None) -> dict:
    """Print the table, record a 'test' event and write ``<save>/test_results.json``."""
    results = test_results(losses, domains, iteration)
    metrics.record({"event": "test", "step": iteration, **results})
    metrics.print("test results after %d steps:\n%s" % (iteration, format_table(results)))
    if save_dir:
        atomic_write_text(os.path.join(save_dir, "test_results.json"), json.dumps(results, indent=2))
    return results
