"""tools/mixing_sweep.py: the mixtures of each kind, run naming, flag checks, resumability, sweep.json."""

import importlib.util
import json
import os

import numpy as np
import pytest

from launch import REPO

spec = importlib.util.spec_from_file_location("mixing_sweep", os.path.join(REPO, "tools", "mixing_sweep.py"))
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)

BASE = ["--data-path", "/d/code_text_document", "/d/law_text_document", "--train-iters", "6", "--lr", "1e-3"]


def test_two_domains_grid_is_p1_from_0_1_to_0_9():
    m = sweep.sweep_mixtures("grid", 2, None, 0)
    np.testing.assert_allclose(m[:, 0], np.arange(1, 10) / 10)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(sweep.sweep_mixtures("dml", 2, 3, 0)[:, 0], [0.1, 0.5, 0.9])
    assert [sweep.mixture_name(w) for w in sweep.sweep_mixtures("grid", 2, 3, 0)] == [
        "p0.10_0.90", "p0.50_0.50", "p0.90_0.10"]


def test_dirichlet_cover_is_seeded_distinct_and_exact_in_hundredths():
    m = sweep.sweep_mixtures("dml", 4, 20, seed=7)
    assert m.shape == (20, 4)
    units = np.round(m * 100).astype(int)
    np.testing.assert_allclose(m * 100, units, atol=1e-9)  # names state the mixture exactly
    assert np.all(units.sum(axis=1) == 100) and np.all(units >= 1)
    assert len({tuple(u) for u in units}) == 20
    np.testing.assert_array_equal(units[0], [25, 25, 25, 25])  # uniform first
    np.testing.assert_array_equal(m, sweep.sweep_mixtures("dml", 4, 20, seed=7))
    assert not np.array_equal(m, sweep.sweep_mixtures("dml", 4, 20, seed=8))
    assert len(sweep.sweep_mixtures("grid", 3, None, 0)) == 9  # default 3K


def test_hundredths_rounding_keeps_the_sum():
    for p in ([0.333, 0.333, 0.334], [0.0, 0.0, 1.0], [0.005, 0.995]):
        u = sweep._hundredths(np.asarray(p))
        assert u.sum() == 100 and u.min() >= 1


def test_skillit_runs_are_the_k_vertices():
    np.testing.assert_array_equal(sweep.sweep_mixtures("skillit", 3, None, 0), np.eye(3))
    with pytest.raises(sweep.SweepError, match="exactly K = 3"):
        sweep.sweep_mixtures("skillit", 3, 5, 0)


@pytest.mark.parametrize("base, match", [
    (BASE + ["--save", "x"], "--save"),
    (BASE + ["--mixing-method", "aioli"], "--mixing-method"),
    (["--train-iters", "3"], "--data-path"),
    (["--data-path", "0.5", "/d/a", "0.5", "/d/b"], "has weights"),
])
def test_base_flags_checked(base, match):
    with pytest.raises(ValueError, match=match):
        sweep.check_base_args(base)


def test_weighted_flags_put_the_mixture_in_data_path():
    flags = sweep.weighted_flags(BASE, [0.3, 0.7])
    assert flags[:5] == ["--data-path", "0.30", "/d/code_text_document", "0.70", "/d/law_text_document"]
    assert flags[5:] == BASE[3:]
    cmd = sweep.run_command(BASE, [0.3, 0.7], "/r/p0.30_0.70", 2)
    assert cmd[-6:] == ["--mixing-method", "static", "--save", "/r/p0.30_0.70", "--load", "/r/p0.30_0.70"]
    assert "--nproc_per_node=2" in cmd


def _fake_run(calls, fail_on=None):
    """A launch_run stand-in: writes what a finished run leaves behind."""
    def run(base, weights, run_dir, nproc):
        calls.append(os.path.basename(run_dir))
        if fail_on == os.path.basename(run_dir):
            raise sweep.SweepError(f"run {run_dir} failed")
        with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
            for s in range(1, 7):
                f.write(json.dumps({"event": "train", "step": s}) + "\n")
            f.write(json.dumps({"event": "eval", "step": 6, "avg_val_loss": float(weights[0])}) + "\n")
        open(os.path.join(run_dir, "test_results.json"), "w").write("{}")
        return 0.0
    return run


def test_sweep_resumes_skipping_finished_runs(tmp_path, monkeypatch):
    out = str(tmp_path / "sweep")
    calls = []
    monkeypatch.setattr(sweep, "launch_run", _fake_run(calls, fail_on="p0.50_0.50"))
    with pytest.raises(sweep.SweepError, match="p0.50_0.50 failed"):
        sweep.run_sweep("grid", out, BASE, num_mixtures=3, log=lambda s: None)
    assert calls == ["p0.10_0.90", "p0.50_0.50"]
    calls.clear()
    monkeypatch.setattr(sweep, "launch_run", _fake_run(calls))
    lines = []
    result = sweep.run_sweep("grid", out, BASE, num_mixtures=3, log=lines.append)
    assert calls == ["p0.50_0.50", "p0.90_0.10"]
    assert "skipped" in lines[0] and len(lines) == 3
    on_disk = json.loads(open(os.path.join(out, "sweep.json")).read())
    assert on_disk == result
    assert result["total_steps"] == 18 and [r["steps"] for r in result["runs"]] == [6, 6, 6]
    assert [r["weights"] for r in result["runs"]] == [[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]]
    assert result["domains"] == ["code", "law"]
    mix = json.loads(open(os.path.join(out, "p0.90_0.10", "mixture.json")).read())
    assert mix["domains"] == ["code", "law"] and mix["weights"] == pytest.approx([0.9, 0.1])
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_run_finished_from_checkpoint_state(tmp_path):
    run = tmp_path / "r"
    (run / "iter_0000006").mkdir(parents=True)
    assert not sweep.run_finished(str(run), 6)
    (run / "latest").write_text("iter_0000006")
    state = {"version": 1, "loop": {"iteration": 6, "phase": None}}
    (run / "iter_0000006" / "megamix_state.json").write_text(json.dumps(state))
    assert sweep.run_finished(str(run), 6) and not sweep.run_finished(str(run), 8)
    state["loop"]["phase"] = {"steps": 2}
    (run / "iter_0000006" / "megamix_state.json").write_text(json.dumps(state))
    assert not sweep.run_finished(str(run), 6)


def test_cli_needs_training_flags(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--kind", "grid", "--out", "/tmp/x"])
    assert "after --" in capsys.readouterr().err
