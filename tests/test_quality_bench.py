"""benchmarks/mixing_quality.py's paper profile: probe scaling, settings, plan and the table statistics."""

import json
import math
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import mixing_quality as mq  # noqa: E402
from benchmarks.paper_profile import aioli_recipe, choose_probes, parse_setting, parse_settings  # noqa: E402
from benchmarks.quality_records import host, run_config  # noqa: E402
from benchmarks.quality_runs import _sweep_mixtures, paper_spec  # noqa: E402
from benchmarks.quality_table import (  # noqa: E402
    headroom_notes, markdown_table, mixture_table, paired_stats, per_seed_table, summarize)


# ---------------------------------------------------------------- recipe
@pytest.mark.parametrize("k,u,share,expect", [
    (2, 250, 0.128, (4, 4)),   # the released K=2 script itself: 4·2·4/250
    (3, 250, 0.288, (4, 6)),   # the released K=3 script itself: 4·3·6/250
    (2, 50, 0.128, (1, 3)),    # 6/50 = 12 %; the tie (3 sweeps of 1 step) goes to the longer probe
    (3, 50, 0.288, (1, 5)),    # 15/50 = 30 % is nearest to 28.8 %
    (2, 10, 0.128, (1, 1)),    # the shortest runs: one probe step each
])
def test_choose_probes_matches_the_papers_probe_share(k, u, share, expect):
    assert choose_probes(k, u, share, max_steps=4 if k == 2 else 6) == expect


def test_choose_probes_leaves_a_training_step_or_fails():
    assert choose_probes(7, 8, 0.5) == (1, 1)  # 7 probe steps < U = 8
    with pytest.raises(ValueError, match="too short"):
        choose_probes(7, 7, 0.5)


def test_paper_recipe_flags_and_share():
    r = aioli_recipe(2, 50)
    assert (r.one_hot_factor, r.eta, r.ema, r.update, r.prior_steps) == (0.625, 0.2, 0.1, "reset", 0)
    assert r.probe_share == pytest.approx(0.12)
    flags = r.flags()
    assert flags[flags.index("--aioli-one-hot-factor") + 1] == "0.625"
    assert flags[flags.index("--aioli-ema") + 1] == "0.1"
    r3 = aioli_recipe(3, 50)
    assert (r3.one_hot_factor, r3.eta, r3.ema) == (0.5, 0.1, 0.5) and r3.probe_share == pytest.approx(0.3)
    r7 = aioli_recipe(7, 50)
    assert "not the paper's" in r7.describe() and "--aioli-ema" not in r7.flags()


def test_paper_spec_is_twenty_rounds_with_a_ten_percent_warmup():
    spec = paper_spec("data/corpus", "runs/x", 1000, split_seed=3)
    assert spec.round_length == 50 and spec.warmup_iters(1000) == 100 and spec.warmup_iters(500) == 50
    assert spec.min_lr == pytest.approx(0.2 * spec.lr)
    flags = spec.base_flags(["code", "legal"], seed=4, iters=1000)
    assert flags[flags.index("--split-seed") + 1] == "3" and flags[flags.index("--seed") + 1] == "4"
    assert flags[flags.index("--eval-micro-batch-size") + 1] == "64"
    assert paper_spec("c", "o", 200).round_length == 10
    with pytest.raises(ValueError, match="--train-iters"):
        paper_spec("c", "o", 30)


# ---------------------------------------------------------------- settings
def test_parse_setting():
    builtin = {"code+legal": ["code", "legal"]}
    assert parse_setting("a=code, legal", builtin) == ("a", ["code", "legal"])
    assert parse_setting("code+legal", builtin) == ("code+legal", ["code", "legal"])
    for bad, match in [("a=code", "at least 2"), ("=code,legal", "name"), ("a/b=code,legal", "name"),
                       ("a=code,code", "twice"), ("nosuch", "NAME=DOMAIN1")]:
        with pytest.raises(ValueError, match=match):
            parse_setting(bad, builtin)
    assert parse_settings(None, builtin) == builtin
    with pytest.raises(ValueError, match="given twice"):
        parse_settings(["a=x,y", "a=y,z"], builtin)
    args = mq._parse(["--setting", "a=code,legal", "--setting", "b=x,y,z"])
    assert mq.chosen_settings(args) == {"a": ["code", "legal"], "b": ["x", "y", "z"]}
    with pytest.raises(SystemExit):
        mq.chosen_settings(mq._parse(["--setting", "a=code"]))


def test_paper_plan_runs_headroom_on_two_domains_and_aux_seeds():
    methods = mq.PROFILES["paper"]
    two = dict(mq.plan("paper", methods, 2, 5, 3))
    assert two == {"stratified": 5, "aioli": 5, "p0.45": 3, "p0.55": 3, "grid": 3, "grid-half": 3, "grid+aioli": 3}
    three = dict(mq.plan("paper", methods, 3, 5, 3))
    assert three["p0.45"] == three["grid"] == 0 and three["grid+aioli"] == 3
    seven = dict(mq.plan("paper", methods, 7, 5, 3))
    assert [m for m, n in seven.items() if n] == ["stratified", "aioli"]
    assert dict(mq.plan("quick", ["stratified", "aioli"], 7, 3, 1)) == {"stratified": 3, "aioli": 3}
    assert dict(mq.plan("paper", ["aioli-ppl", "aioli-look-ppl"], 7, 5, 3)) == {"aioli-ppl": 5, "aioli-look-ppl": 5}
    controls = ["mirror:aioli-grad-ppl", "replay:p0.55", "mirror:grid"]  # as often and where their source row runs
    assert dict(mq.plan("paper", controls, 2, 5, 3)) == {"mirror:aioli-grad-ppl": 5, "replay:p0.55": 3, "mirror:grid": 3}
    assert dict(mq.plan("paper", controls, 3, 5, 3)) == {"mirror:aioli-grad-ppl": 5, "replay:p0.55": 0, "mirror:grid": 0}


def test_aioli_rows_name_their_estimator_and_objective():
    from benchmarks.quality_runs import _aioli_row_flags

    spec = paper_spec("corpus", "out", 1000)
    spec.grad_interval = 25
    value = lambda flags, name: flags[flags.index(name) + 1] if name in flags else None  # noqa: E731
    for row, estimator, objective in [("aioli", None, None), ("aioli-ppl", None, "perplexity"),
                                      ("aioli-grad", "gradient", None), ("aioli-look-ppl", "lookahead", "perplexity")]:
        flags = _aioli_row_flags(spec, row, 2)
        assert flags[:len(spec.aioli_flags(2))] == spec.aioli_flags(2)
        assert value(flags, "--aioli-estimator") == estimator and value(flags, "--aioli-objective") == objective
        assert value(flags, "--aioli-grad-interval") == (None if estimator is None else "25")
        assert value(flags, "--aioli-grad-val-batch") is None  # not set: the run's micro-batch
    spec.grad_val_batch = 3
    assert value(_aioli_row_flags(spec, "aioli-grad-ppl-own", 2), "--aioli-grad-val-batch") == "3"
    assert value(_aioli_row_flags(spec, "aioli", 2), "--aioli-grad-val-batch") is None
    assert "3 validation samples a domain per estimate" in spec.describe([2])


def test_own_recipe_rows_run_megamix_k7_recipe_at_any_k():
    from benchmarks.mixing_quality import plan
    from benchmarks.quality_runs import _aioli_row_flags, aioli_row

    spec = paper_spec("corpus", "out", 1000)
    value = lambda flags, name: flags[flags.index(name) + 1] if name in flags else None  # noqa: E731
    assert aioli_row("aioli-grad-ppl-own") == ("aioli-grad", True, True)
    assert aioli_row("aioli-own") == ("aioli", False, True) and aioli_row("grid-own") is None
    assert aioli_row("aioli-ppl") == ("aioli", True, False)
    flags = _aioli_row_flags(spec, "aioli-grad-ppl-own", 2)
    assert flags[:len(spec.aioli_flags(2, own=True))] == aioli_recipe(2, 50, own=True).flags()
    assert (value(flags, "--aioli-update"), value(flags, "--aioli-eta"), value(flags, "--aioli-ema")) == \
        ("cumulative", "1.0", None)
    assert value(flags, "--aioli-prior-steps") == "50" and value(flags, "--aioli-objective") == "perplexity"
    assert value(flags, "--aioli-one-hot-factor") == "0.625"  # f must exceed 1/K: the K = 2 paper value
    assert value(_aioli_row_flags(spec, "aioli-grad-ppl", 2), "--aioli-update") == "reset"
    assert aioli_recipe(7, 50, own=True) == aioli_recipe(7, 50)  # K >= 4 runs it already
    with pytest.raises(SystemExit, match="--methods aioli-own: an '-own' Aioli row needs --profile paper"):
        mq.main(["--profile", "quick", "--methods", "stratified,aioli-own", "--corpus", "no/such/dir"])
    # an -own row is a main row: it runs on every seed, like the row it modifies
    assert dict(plan("paper", ["aioli-grad-ppl-own", "p0.55"], 2, 5, 3)) == {"aioli-grad-ppl-own": 5, "p0.55": 3}


# ---------------------------------------------------------------- statistics
def test_paired_stats_t_interval():
    d = [-0.19, 0.20, 0.33, 0.26, 0.03]  # the pilot: Aioli − stratified on seeds 1–5
    s = paired_stats(d)
    half = 2.776445105 * np.std(d, ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert s["n"] == 5 and s["mean"] == pytest.approx(0.126) and s["std"] == pytest.approx(np.std(d, ddof=1))
    assert (s["lo"], s["hi"]) == (pytest.approx(0.126 - half), pytest.approx(0.126 + half))
    assert s["lo"] < 0 < s["hi"]
    one = paired_stats([0.5])
    assert one["mean"] == 0.5 and one["lo"] is None and paired_stats([])["n"] == 0


def _records(setting, method, ppls):
    return [{"setting": setting, "method": method, "seed": i + 1, "avg_test_ppl": p, "avg_test_loss": math.log(p),
             "extra_steps": 0} for i, p in enumerate(ppls)]


def test_table_counts_intervals_below_zero_and_signs_and_marks_partial_cells():
    recs = (_records("s1", "stratified", [10, 11, 12]) + _records("s1", "aioli", [9.0, 10.1, 10.9])
            + _records("s2", "stratified", [10, 11, 12]) + _records("s2", "aioli", [9.5, 11.6, 11.8])
            + _records("s3", "stratified", [10, 11]) + _records("s3", "p0.45", [9.0, 10.0, 11.0]))
    settings, methods = ["s1", "s2", "s3"], ["stratified", "aioli", "p0.45"]
    summary = summarize(recs, settings, methods)
    planned = {s: {"stratified": 3, "aioli": 3, "p0.45": 3 if s == "s3" else 0} for s in settings}
    table = markdown_table(summary, settings, methods, planned)
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines()[2:]}
    assert "| 1/2 | 2/2 |" in rows["aioli"]  # s1 all below (interval < 0); s2 mean < 0 only
    assert "not run (0/3)" in rows["aioli"] and "n/a" in rows["p0.45"]
    assert "(n=2/3)" in rows["stratified"] and "-1.00 ± 0.00" in rows["p0.45"]
    notes = headroom_notes(summary, settings)
    assert len(notes) == 1 and notes[0].startswith("- s3: best reachable tilt p0.45 -1.00 (n=2)")
    loss = markdown_table(summarize(recs, settings, methods, "avg_test_loss"), settings, methods, planned)
    rows = {line.split(" | ")[0][2:]: line for line in loss.splitlines()[2:]}
    assert f"{np.mean(np.log([10, 11, 12])):.4f} ± " in rows["stratified"]
    assert f"{np.mean(np.log([9.0, 10.1, 10.9]) - np.log([10, 11, 12])):+.4f} ± " in rows["aioli"]


def test_per_seed_table_pairs_each_seed_and_marks_missing_runs():
    recs = (_records("s3", "stratified", [10, 11]) + _records("s3", "p0.45", [9.0, 10.5, 11.0])
            + _records("s1", "stratified", [99]))
    lines = per_seed_table(recs, "s3", ["stratified", "aioli", "p0.45"]).splitlines()
    assert lines[0] == "| seed | stratified | aioli | p0.45 |" and len(lines) == 5
    assert lines[2:] == ["| 1 | 10.00 | — | -1.00 |", "| 2 | 11.00 | — | -0.50 |", "| 3 | — | — | — |"]


def test_mean_mixture_weights_phases_by_their_steps_and_the_table_averages_seeds(tmp_path):
    from benchmarks.quality_records import mean_mixture

    events = [{"event": "phase", "step": 0, "steps": 0, "weights": {"a": 0.5, "b": 0.5}},  # an evaluation
              {"event": "phase", "step": 0, "steps": 30, "weights": {"a": 0.625, "b": 0.375}},  # a probe
              {"event": "eval", "step": 30, "val_loss": {"a": 1.0, "b": 2.0}},
              {"event": "phase", "step": 30, "steps": 10, "weights": {"a": 0.25, "b": 0.75}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    mix = mean_mixture(str(tmp_path))
    assert mix == {"a": pytest.approx((30 * 0.625 + 10 * 0.25) / 40), "b": pytest.approx((30 * 0.375 + 10 * 0.75) / 40)}
    assert mean_mixture(str(tmp_path / "absent")) is None
    recs = [{"setting": "s", "method": "aioli", "seed": i, "mean_weights": {"a": p, "b": 1 - p}}
            for i, p in ((1, 0.4), (2, 0.6), (3, 0.5))] + [{"setting": "s", "method": "stratified", "seed": 1}]
    lines = mixture_table(recs, "s", ["a", "b"], ["stratified", "aioli"]).splitlines()
    assert lines == ["| method | seeds | a | b |", "|---|---|---|---|", "| aioli | 3 | 0.500 | 0.500 |"]


def test_sweep_mixtures_are_plain_floats_on_the_simplex_and_seeded():
    two = _sweep_mixtures(2, seed=1)
    assert [m[0] for m in two] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    # plain floats, so the sweep's labels print 0.1 and not np.float64(0.1)
    assert all(type(x) is float and math.isclose(sum(m), 1.0) for m in two for x in m)
    three = _sweep_mixtures(3, seed=1)
    assert len(three) == 7 and three[0] == [1 / 3] * 3
    assert all(type(x) is float for m in three for x in m) and all(math.isclose(sum(m), 1.0) for m in three)
    assert three == _sweep_mixtures(3, seed=1) and three != _sweep_mixtures(3, seed=2)


# ---------------------------------------------------------------- runs (training mocked)
def test_restricted_rows_share_one_half_length_sweep_and_grid_reuses_its_sweep_run(tmp_path, monkeypatch):
    from benchmarks import quality_runs as qr

    trained, fits = [], []

    def fake_train(spec, run_dir, domains, seed, flags, iters=None, label=""):
        trained.append((os.path.relpath(run_dir, tmp_path), iters or spec.train_iters, flags))
        return {"run_dir": run_dir, "avg_test_ppl": 1.0}

    def fake_fit(kind, runs, out):
        fits.append(out)
        qr._weights_file(spec, out, ["a", "b"], [0.3, 0.7])  # the sweep's mix02 mixture
        return out

    monkeypatch.setattr(qr, "train", fake_train)
    monkeypatch.setattr(qr, "_fit", fake_fit)
    spec = paper_spec(str(tmp_path / "corpus"), str(tmp_path), 1000)
    root = lambda m: str(tmp_path / "s" / m / "seed1")  # noqa: E731
    half = qr.run_method(spec, "grid-half", root("grid-half"), ["a", "b"], 1)
    prior = qr.run_method(spec, "grid+aioli", root("grid+aioli"), ["a", "b"], 1)
    sweeps = [t for t in trained if "/sweep/" in t[0]]
    assert len({t[0] for t in sweeps}) == 9 and all(t[1] == 500 for t in sweeps)  # one half-length sweep, shared
    assert half["extra_steps"] == prior["extra_steps"] == 9 * 500
    final_prior = trained[-1]
    assert final_prior[0] == "s/grid+aioli/seed1/final" and "--aioli-prior" in final_prior[2]
    assert final_prior[2][final_prior[2].index("--aioli-one-hot-factor") + 1] == "0.625"
    trained.clear()
    full = qr.run_method(spec, "grid", root("grid"), ["a", "b"], 1)
    assert full["run_dir"].endswith(os.path.join("_learn", "seed1", "full", "sweep", "mix02"))
    sweep_flags = [t[2] for t in trained if t[0].endswith("full/sweep/mix02")]
    assert sweep_flags[-1] == sweep_flags[0]  # read back with the flags it was trained with
    assert full["extra_steps"] == 8 * 1000 and not any(t[0].startswith("s/grid/") for t in trained)
    tilt = qr.run_method(spec, "p0.45", root("p0.45"), ["a", "b"], 1)
    assert tilt["method"] == "p0.45" and qr._tilt("p0.45", 2) == [0.45, pytest.approx(0.55)]


def test_control_rows_replay_their_source_rows_schedule_of_the_same_seed(tmp_path, monkeypatch):
    from benchmarks import quality_runs as qr

    trained = []

    def fake_train(spec, run_dir, domains, seed, flags, iters=None, label=""):
        trained.append((os.path.relpath(run_dir, tmp_path), flags))
        return {"run_dir": run_dir, "avg_test_ppl": 1.0}

    monkeypatch.setattr(qr, "train", fake_train)
    spec = paper_spec(str(tmp_path / "corpus"), str(tmp_path), 1000)
    rec = qr.run_method(spec, "mirror:aioli-grad-ppl", str(tmp_path / "s" / "mirror:aioli-grad-ppl" / "seed2"),
                        ["a", "b"], 2)
    (source, src_flags), (control, flags) = trained
    assert source == "s/aioli-grad-ppl/seed2/final" and "--aioli-estimator" in src_flags
    assert control == "s/mirror:aioli-grad-ppl/seed2/final" and rec["method"] == "mirror:aioli-grad-ppl"
    assert flags == ["--mixing-method", "replay", "--replay-schedule",
                     str(tmp_path / "s" / "aioli-grad-ppl" / "seed2" / "final" / "schedule.json"), "--replay-mirror"]
    trained.clear()
    qr.run_method(spec, "replay:stratified", str(tmp_path / "s" / "replay:stratified" / "seed1"), ["a", "b"], 1)
    assert "--replay-mirror" not in trained[-1][1] and trained[0][0] == "s/stratified/seed1/final"
    assert qr.source_row("p0.55") == "p0.55" and qr.source_row("mirror:p0.55") == "p0.55"


def _finished_run(out, run: str, avg_ppl: float) -> None:
    """A final run's test_results.json under ``out/run/final``, as a finished benchmark run leaves it."""
    done = out / run / "final"
    done.mkdir(parents=True)
    (done / "test_results.json").write_text(json.dumps({"test_ppl": {"a": 2.0, "b": 4.0}, "avg_test_ppl": avg_ppl,
                                                        "avg_test_loss": 1.04, "worst_domain": "b",
                                                        "worst_test_ppl": 4.0}))


def test_report_only_trains_nothing_and_skips_unfinished_runs(tmp_path, capsys):
    from benchmarks import quality_runs as qr

    spec = paper_spec(str(tmp_path / "corpus"), str(tmp_path), 1000)
    spec.report_only = True
    _finished_run(tmp_path, "s/stratified/seed1", 3.0)
    recs = qr.run_setting(spec, "s", ["a", "b"], [("stratified", 2), ("aioli", 2), ("p0.45", 1), ("grid", 1)])
    assert [(r["method"], r["seed"], r["avg_test_ppl"]) for r in recs] == [("stratified", 1, 3.0)]
    assert "aioli seed 1: not run yet" in capsys.readouterr().out
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["s/stratified/seed1/final/test_results.json"]  # no run directory, no weights file


def test_a_runs_record_carries_the_host_it_trained_on(tmp_path):
    """wall.json names the CPU and torch a run trained on (runs whose mixture moves freely can differ
    across CPUs); the record reads it, and a run from before the field reads as None."""
    import torch

    from benchmarks import quality_runs as qr

    assert f"torch {torch.__version__}" in host() and f"{os.cpu_count()} CPUs" in host()
    spec = paper_spec(str(tmp_path / "corpus"), str(tmp_path), 1000)
    spec.report_only = True
    _finished_run(tmp_path, "s/stratified/seed1", 3.0)
    (tmp_path / "s/stratified/seed1/final/wall.json").write_text(json.dumps({"wall_s": 12.0, "host": "cpu X"}))
    _finished_run(tmp_path, "s/stratified/seed2", 3.5)
    recs = qr.run_setting(spec, "s", ["a", "b"], [("stratified", 2)])
    assert [(r["wall_s"], r["host"]) for r in recs] == [(12.0, "cpu X"), (None, None)]


def test_perplexity_rule_weighs_domains_by_stratifieds_last_validation_perplexity(tmp_path):
    from benchmarks import quality_runs as qr

    spec = paper_spec(str(tmp_path / "corpus"), str(tmp_path), 1000)
    spec.report_only = True
    _finished_run(tmp_path, "s/stratified/seed1", 3.0)
    strat = tmp_path / "s/stratified/seed1/final"
    evals = [{"event": "eval", "step": 500, "val_ppl": {"a": 10.0, "b": 10.0}},
             {"event": "eval", "step": 1000, "val_ppl": {"a": 30.0, "b": 10.0}}, {"event": "test", "step": 1000}]
    (strat / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    assert qr.perplexity_rule(str(strat), ["a", "b"]) == [0.75, 0.25]
    assert qr.perplexity_rule(str(strat), ["b", "a"]) == [0.25, 0.75]
    with pytest.raises(qr.NotRun):  # --report-only: the rule's own run is not there, and nothing is written
        qr.run_method(spec, "ppl-rule", str(tmp_path / "s/ppl-rule/seed1"), ["a", "b"], 1)
    assert not (tmp_path / "s/ppl-rule").exists()
    (strat / "metrics.jsonl").write_text(json.dumps({"event": "train", "step": 1}) + "\n")
    with pytest.raises(ValueError, match="final/metrics.jsonl: no 'eval' event"):
        qr.perplexity_rule(str(strat), ["a", "b"])


def test_config_differences_skip_where_a_run_lies_and_name_each_changed_leaf():
    from benchmarks.quality_records import config_differences

    had = {"training": {"save": "a", "seed": 1}, "logging": {"log_interval": 10}, "mixing": {"options": {"x": 1}}}
    want = {"training": {"save": "b", "seed": 1}, "logging": {"log_interval": 1}, "mixing": {"options": {"x": 2}},
            "domains": ["a"]}
    assert config_differences(had, had) == []
    assert config_differences(had, want) == ["domains: '(absent)' -> ['a']", "mixing.options.x: 1 -> 2"]


def test_a_probe_run_is_not_told_apart_by_the_gradient_options_it_never_read():
    """--aioli-grad-interval's default changed (1 -> half a round): a probe Aioli run stored with
    the old default is still this benchmark's run, while a gradient run's interval still counts."""
    from benchmarks.quality_records import config_differences, without_unread

    def cfg(estimator, interval):
        return {"mixing": {"method": "aioli", "options": {"estimator": estimator, "grad_interval": interval,
                                                          "grad_val_batch": None, "eta": 0.2}}}
    assert config_differences(without_unread(cfg("probes", 1)), without_unread(cfg("probes", None))) == []
    assert config_differences(without_unread(cfg("gradient", 1)), without_unread(cfg("gradient", None))) == [
        "mixing.options.grad_interval: 1 -> None"]
    assert without_unread({"mixing": {"method": "stratified", "options": None}})["mixing"]["options"] is None


def test_a_run_started_with_other_flags_is_refused_not_reused(tmp_path):
    """A finished run is skipped, so one trained with another --grad-interval (or other domains)
    must stop the benchmark instead of being reported as this configuration's run."""
    from benchmarks import quality_runs as qr
    from megamix.data.tokenizer import train_sentencepiece

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    (corpus / "t.txt").write_text("\n".join(" ".join(words[(i + j) % 8] for j in range(9)) for i in range(300)))
    train_sentencepiece(str(corpus / "t.txt"), str(corpus / "tokenizer"), vocab_size=300, seed=1)
    spec = paper_spec(str(corpus), str(tmp_path / "out"), 1000)
    spec.report_only = True
    run_dir = str(tmp_path / "out" / "s" / "aioli-grad" / "seed1" / "final")
    flags = lambda interval: aioli_recipe(2, 50).flags() + ["--aioli-estimator", "gradient",  # noqa: E731
                                                              "--aioli-grad-interval", str(interval)]
    cmd = [*spec.base_flags(["a", "b"], 1, 1000), *flags(25), "--save", run_dir, "--load", run_dir]
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(run_config(cmd, ["a", "b"]), f)
    with pytest.raises(qr.NotRun):  # same configuration: resumable (here: not trained, --report-only)
        qr.train(spec, run_dir, ["a", "b"], 1, flags(25))
    with pytest.raises(SystemExit, match=r"another configuration \(mixing.options.grad_interval: 25 -> 50\)"):
        qr.train(spec, run_dir, ["a", "b"], 1, flags(50))
    with pytest.raises(SystemExit, match=r"domains: \['a', 'b'\] -> \['b', 'a'\]"):
        qr.train(spec, run_dir, ["b", "a"], 1, flags(25))
    moved = paper_spec(str(corpus), str(tmp_path / "elsewhere"), 1000)  # another --out: cache path differs
    moved.report_only = True
    with pytest.raises(qr.NotRun):
        qr.train(moved, run_dir, ["a", "b"], 1, flags(25))


def test_first_seed_runs_and_reads_only_the_later_seeds(tmp_path):
    from benchmarks import quality_runs as qr

    spec = paper_spec(str(tmp_path / "corpus"), str(tmp_path), 1000)
    spec.report_only = True
    for seed in (1, 2, 3):
        _finished_run(tmp_path, f"s/stratified/seed{seed}", float(seed))
    recs = qr.run_setting(spec, "s", ["a", "b"], [("stratified", 3)], first_seed=2)
    assert [(r["seed"], r["avg_test_ppl"]) for r in recs] == [(2, 2.0), (3, 3.0)]


def test_first_seed_outside_the_seeds_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(SystemExit, match="--first-seed 6"):
        mq.main(["--profile", "paper", "--seeds", "5", "--first-seed", "6", "--corpus", str(tmp_path)])


@pytest.mark.parametrize("k", [2, 3, 7])
@pytest.mark.parametrize("own", [False, True])
def test_every_recipe_passes_the_launchers_own_checks(k, own):
    import argparse

    from megamix.training.mixing_args import add_mixing_args, mixing_config_from_args

    parser = add_mixing_args(argparse.ArgumentParser())
    cfg = mixing_config_from_args(parser.parse_args(aioli_recipe(k, 50, own).flags()), None,
                                  [f"d{i}" for i in range(k)])
    cfg.options.check_domains(k)  # what pretrain_gpt_mix.py runs once it knows K


def test_an_interval_longer_than_a_round_is_refused_before_any_run(tmp_path):
    """At --train-iters 200 a round is 10 steps: --grad-interval 25 is refused for a probe-free row
    (naming the flag and the round), and is no concern of probe or stratified rows."""
    spec = paper_spec(str(tmp_path), str(tmp_path / "out"), 200)
    spec.grad_interval = 25
    with pytest.raises(SystemExit, match=r"--grad-interval 25: longer than a round \(10 steps at --train-iters 200\)"
                                         r", which the aioli-grad-ppl-own rows"):
        mq._check_interval(spec, ["stratified", "aioli", "aioli-grad-ppl-own"])
    mq._check_interval(spec, ["stratified", "aioli", "aioli-ppl"])
    spec.grad_interval = 10
    mq._check_interval(spec, ["aioli-grad", "aioli-look"])
