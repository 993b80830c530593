"""benchmarks/bench_mixing.py's attribution of a probe-free Aioli run's extra time."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_mixing import analyse, estimate_time


def _steps(times: dict[int, float], n: int = 100, base: float = 0.1) -> list[dict]:
    return [{"event": "train", "step": s, "step_time_s": times.get(s, base)} for s in range(1, n + 1)]


def test_estimate_time_counts_the_estimated_steps_over_the_median():
    """0-based step s is estimated when s % interval == 0 and s > 0: 'train' events 26, 51 and 76 at
    interval 25 (not event 1, step 0, which has no preconditioner yet); a slow step elsewhere is
    not the estimator's."""
    steps = _steps({26: 0.4, 51: 0.45, 76: 0.35, 1: 0.9, 40: 0.7})
    got = estimate_time(steps, 25, 0.1, 20.0)
    assert got["estimates"] == 3
    assert got["estimate_s"] == pytest.approx(0.3 + 0.35 + 0.25)
    assert got["self_ratio"] == pytest.approx(20.0 / (20.0 - 0.9))


def test_analyse_reads_the_runs_metrics(tmp_path):
    evs = _steps({26: 0.5, 51: 0.5}, n=60) + [{"event": "eval", "eval_s": 0.2}, {"event": "phase", "kind": "train"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evs))
    got = analyse(str(tmp_path), 10.0, estimate_interval=25)
    assert got["steps"] == 60 and got["evals"] == 1 and got["phase_kinds"] == {"train": 1}
    assert got["median_step_ms"] == pytest.approx(100.0)
    assert got["estimates"] == 2 and got["estimate_s"] == pytest.approx(0.8)
    assert "self_ratio" not in analyse(str(tmp_path), 10.0)  # a run without estimates
