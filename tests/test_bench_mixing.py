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
    got = estimate_time(steps, 25, 0.1, 20.0, [range(0, 100)])
    assert got["estimates"] == 3
    assert got["estimate_s"] == pytest.approx(0.3 + 0.35 + 0.25)
    assert got["self_ratio"] == pytest.approx(20.0 / (20.0 - 0.9))


def test_estimate_time_skips_steps_outside_train_phases():
    """A prior phase (the '-own' recipe's round on the start mixture) takes no estimate: at
    interval 25 with a prior phase over steps 0-49, step 25 (event 26) is not counted even when slow."""
    steps = _steps({26: 0.5, 51: 0.4, 76: 0.3})
    got = estimate_time(steps, 25, 0.1, 20.0, [range(50, 100)])
    assert got["estimates"] == 2
    assert got["estimate_s"] == pytest.approx(0.3 + 0.2)


def test_analyse_reads_the_runs_metrics(tmp_path):
    evs = _steps({26: 0.5, 51: 0.5}, n=60) + [{"event": "eval", "eval_s": 0.2},
                                              {"event": "phase", "kind": "train", "step": 0, "steps": 60}]
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


def _probe_run() -> list[dict]:
    """A probe run's events: the evaluation of the untrained model (an eval-only phase, as in stratified's
    run), a round of two probes and a training part, each phase with its start-up time, a slow first step
    and an evaluation at its end (steps 0.1 s, the median)."""
    return [{"event": "phase", "kind": "eval", "begin_s": 0.01}, {"event": "eval", "eval_s": 0.5},
            {"event": "phase", "kind": "probe", "begin_s": 0.02}, *_steps({1: 0.4}, n=3),
            {"event": "eval", "eval_s": 0.6},
            {"event": "phase", "kind": "probe", "begin_s": 0.03}, *_steps({1: 0.3}, n=2),
            {"event": "eval", "eval_s": 0.7},
            {"event": "phase", "kind": "train", "begin_s": 0.5}, *_steps({1: 0.9}, n=10),
            {"event": "eval", "eval_s": 0.4}]


def test_probe_cost_is_the_evaluations_ending_probe_phases_and_their_start_up():
    """Only evaluations that end a probe phase are probing's (not the untrained model's, which stratified
    has too), and only those phases' start-up and first step over the median (0.3 + 0.2 s; the training
    phase's slow first step is not probing's); a run recorded before 'begin_s' existed counts no start-up."""
    from benchmarks.bench_mixing import probe_eval_time

    got = probe_eval_time(_probe_run(), 10.0, 0.1)
    assert got["probe_evals"] == 2
    assert got["probe_eval_s"] == pytest.approx(1.3)
    assert got["probe_phase_s"] == pytest.approx(0.05 + 0.5)
    assert got["self_ratio"] == pytest.approx(10.0 / (10.0 - 1.3 - 0.55))
    old = [{k: v for k, v in e.items() if k != "begin_s"} for e in _probe_run()]
    assert probe_eval_time(old, 10.0, 0.1)["probe_phase_s"] == pytest.approx(0.5)


def test_probe_runs_are_judged_by_their_within_run_ratio(tmp_path, capsys):
    """analyse() adds the probe figures to a run with probe phases only, and the verdict uses them: a
    probe run faster than stratified overall (its machine sped up) still misses when its probes cost
    more than 15 % of its own loop."""
    from benchmarks.bench_mixing import breakdown, print_table

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in _probe_run()))
    probe = analyse(str(tmp_path), 10.0)
    assert probe["probe_evals"] == 2 and "estimates" not in probe
    base = {"loop_s": 12.0, "step_s": 1.3, "non_step_s": 10.7, "evals": 1, "eval_s": 0.4, "phases": 1,
            "median_step_ms": 100.0}
    print_table({"stratified": base, "aioli-val": probe}, breakdown({"stratified": base, "aioli-val": probe}))
    out = capsys.readouterr().out
    assert ("aioli-val: 2 probe evaluations took 1.30 s (650 ms each), their phases' start-up and first steps "
            "0.55 s") in out
    assert "aioli-val within-run ratio 1.227: target <= 1.15 MISSED" in out


def test_corpus_data_names_the_missing_file_and_sets_the_corpus_flags(tmp_path):
    """--corpus/--domains train on the real corpus as mixing_quality.py does; a missing domain is named."""
    from benchmarks.bench_mixing import corpus_data

    for name in ("code_text_document.idx", "code_text_document.bin", "tokenizer.model"):
        (tmp_path / name).write_text("")
    prefixes, flags = corpus_data(str(tmp_path), ["code"])
    assert prefixes == [str(tmp_path / "code_text_document")]
    assert flags["--tokenizer-model"] == str(tmp_path / "tokenizer.model") and flags["--vocab-size"] is None
    assert flags["--split"] == "98,1,1" and flags["--split-seed"] == 1
    with pytest.raises(SystemExit, match="legal_text_document.idx not found"):
        corpus_data(str(tmp_path), ["code", "legal"])


@pytest.mark.parametrize("argv", [["--corpus", "x"], ["--domains", "code"],
                                  ["--corpus", "x", "--domains", "code"]])
def test_corpus_needs_domains_and_the_paper_profile(argv, capsys):
    from benchmarks.bench_mixing import main

    with pytest.raises(SystemExit):
        main(argv)
    assert "--corpus and --domains go together, with --profile paper" in capsys.readouterr().err


def test_a_paper_recipe_that_cannot_fit_is_refused_before_any_run(capsys):
    from benchmarks.bench_mixing import main

    with pytest.raises(SystemExit):
        main(["--profile", "paper", "--train-iters", "40", "--corpus", "x", "--domains", "a,b,c,d,e,f,g"])
    assert "--train-iters 40: round length U=2 is too short for 7 probes" in capsys.readouterr().err
