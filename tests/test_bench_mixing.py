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


def test_probe_free_runs_are_judged_by_their_within_run_ratio(capsys):
    """A drift between the two runs must not decide the verdict: the gradient run below is faster
    than stratified overall (its machine sped up) but its estimates cost 15 % of its own loop."""
    from benchmarks.bench_mixing import breakdown, print_table

    base = {"loop_s": 100.0, "step_s": 90.0, "non_step_s": 10.0, "evals": 2, "eval_s": 1.0, "phases": 2,
            "median_step_ms": 90.0}
    grad = {**base, "loop_s": 98.0, "estimates": 4, "estimate_s": 98.0 - 98.0 / 1.15, "self_ratio": 1.15}
    res = {"stratified": base, "aioli-grad": grad}
    print_table(res, breakdown(res))
    out = capsys.readouterr().out
    assert "aioli-grad within-run ratio 1.150: target <= 1.1 MISSED" in out
