"""Law-fidelity report: probe design, A* recovery, agreement scores, the method's A, and the tool end to end."""

import importlib.util
import json
import os

import numpy as np
import pytest
from scipy.stats import rankdata

from megamix.mixing import fidelity
from megamix.mixing.skillit import SkillItConfig
from launch import REPO, launch, make_data, tiny_args


def test_probe_design_rows_on_simplex_and_seeded():
    cfg = fidelity.FidelityConfig(num_probes=7, one_hot_factor=0.8, seed=3)
    p = fidelity.probe_design(3, cfg)
    assert p.shape == (7, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.all(p >= 0)
    np.testing.assert_allclose(np.diag(p[:3]), 0.8)
    np.testing.assert_allclose(p[:3][~np.eye(3, dtype=bool)], 0.1)
    np.testing.assert_array_equal(p, fidelity.probe_design(3, cfg))
    other = fidelity.probe_design(3, fidelity.FidelityConfig(num_probes=7, one_hot_factor=0.8, seed=4))
    assert not np.allclose(p[3:], other[3:])
    with pytest.raises(ValueError, match="at least K = 3"):
        fidelity.probe_design(3, fidelity.FidelityConfig(num_probes=2))


@pytest.mark.parametrize("field, value, flag", [("num_probes", 1, "--num-probes"), ("probe_steps", 0, "--probe-steps"),
                                                ("one_hot_factor", 1.5, "--one-hot-factor")])
def test_config_validation_names_the_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        fidelity.FidelityConfig(**{field: value})


def test_fit_recovers_a_linear_law():
    rng = np.random.default_rng(0)
    a_true = rng.uniform(0.0, 1.0, (4, 4))
    p = fidelity.probe_design(4, fidelity.FidelityConfig(num_probes=10, seed=1))
    a_star, r2 = fidelity.fit_a_star(p, p @ a_true.T)
    np.testing.assert_allclose(a_star, a_true, atol=1e-10)
    assert r2 == pytest.approx(1.0)
    noisy, r2_noisy = fidelity.fit_a_star(p, p @ a_true.T + rng.normal(0, 0.3, (10, 4)))
    assert r2_noisy < 0.99
    rep = fidelity.agreement(a_true, a_star)
    assert rep["cosine_column_sums"] == pytest.approx(1.0)
    assert rep["spearman_column_sums"] == pytest.approx(1.0)
    assert rep["cosine_matrix"] == pytest.approx(1.0)


def test_default_probes_hold_out_at_least_sixty():
    """A config without --num-probes gets the K q_j plus max(60, 5K) held-out mixtures."""
    for k in (2, 3, 7, 20):
        p = fidelity.probe_design(k, fidelity.FidelityConfig())
        assert p.shape == (k + max(60, 5 * k), k)
        assert len(p) - k >= max(60, 5 * k)


def test_agreement_against_independent_formulas():
    m = np.array([[0.3, 0.1, 0.0], [0.2, 0.5, 0.1], [0.0, 0.1, 0.2]])
    s = np.array([[0.1, 0.4, 0.2], [0.1, 0.1, 0.3], [0.2, 0.0, 0.1]])
    rep = fidelity.agreement(m, s)
    x, y = m.sum(0), s.sum(0)
    assert rep["cosine_column_sums"] == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
    rx, ry = rankdata(x), rankdata(y)
    assert rep["spearman_column_sums"] == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert rep["cosine_matrix"] == pytest.approx(float((m * s).sum() / np.linalg.norm(m) / np.linalg.norm(s)))
    vec = fidelity.agreement(np.array([3.0, 2.0, 1.0]), s)  # a gradient vector stands for column sums
    assert vec["cosine_matrix"] is None and vec["spearman_column_sums"] == pytest.approx(-1.0)  # s sums 0.4, 0.5, 0.6
    assert np.isnan(fidelity.spearman(np.ones(3), y)) and np.isnan(fidelity.cosine(np.zeros(3), y))
    xc, yc = x - x.mean(), y - y.mean()
    assert rep["centred_cosine_column_sums"] == pytest.approx(xc @ yc / np.linalg.norm(xc) / np.linalg.norm(yc))


def test_centred_cosine_ignores_a_shift_common_to_every_column():
    """EG's p ∝ p ⊙ exp(η · column sums) does not see a shift shared by all columns: the centred
    cosine does not either, while the plain cosine does."""
    est, judge = np.array([4.795, 3.406, 1.547]), np.array([0.054, -0.0005, -0.0644])  # section 19, K = 3 seed 2
    assert fidelity.cosine(est, judge) < 0.35 and fidelity.centred_cosine(est, judge) > 0.99
    for shift in (-5.0, 0.0, 3.0):
        assert fidelity.centred_cosine(est + shift, judge) == pytest.approx(fidelity.centred_cosine(est, judge))
    assert fidelity.centred_cosine(np.array([1.0, 2.0]), np.array([0.3, 0.1])) == pytest.approx(-1.0)  # K = 2: sign
    assert np.isnan(fidelity.centred_cosine(np.ones(3), judge))


def test_method_a_from_events(tmp_path):
    a0, a1 = np.eye(2).tolist(), [[0.1, 0.2], [0.3, 0.4]]
    events = [{"event": "aioli_round", "round": 0, "step": 5, "A": a0, "A_normalized": a0, "E": a0},
              {"event": "aioli_round", "round": 1, "step": 9, "A": a1, "A_normalized": None, "E": a1},
              {"event": "aioli_round", "round": 2, "step": 12, "skipped": "probe cut short"}]
    a, src = fidelity.method_a("aioli", events)
    np.testing.assert_array_equal(a, a1)  # last completed round, A when normalisation is off
    assert "round 1" in src
    with pytest.raises(ValueError, match="no 'A_normalized'"):
        fidelity.method_a("aioli", events, key="A_normalized")
    g = np.array([[1.0, 0.5], [0.0, 1.0]])
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps({"domains": ["a", "b"], "graph": g.tolist()}))
    sk = [{"event": "skillit_update", "step": 4, "domains": ["a", "b"], "val_loss": [2.0, 3.0]}]
    a, _ = fidelity.method_a("skillit", sk, SkillItConfig(graph=str(graph)))
    np.testing.assert_allclose(a.sum(axis=0), g @ [2.0, 3.0])  # column sums = Skill-It's gradient G·L
    dr = [{"event": "doremi_update", "step": 1, "excess_loss": [0.1, 0.2]}]
    np.testing.assert_array_equal(fidelity.method_a("doremi", dr)[0], [0.1, 0.2])
    with pytest.raises(ValueError, match="learns no A"):
        fidelity.method_a("stratified", [])
    with pytest.raises(ValueError, match="aioli_round"):
        fidelity.method_a("aioli", events[2:])


def _tool():
    spec = importlib.util.spec_from_file_location("mixing_law_fidelity",
                                                  os.path.join(REPO, "tools", "mixing_law_fidelity.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_fidelity_tool_on_an_aioli_run(tmp_path, capsys):
    prefixes = make_data(str(tmp_path / "data"))
    run = str(tmp_path / "aioli")
    launch(tiny_args(prefixes, run, str(tmp_path / "cache"), iters=16, **{
        "--mixing-method": "aioli", "--aioli-lp-rounds": 1, "--aioli-lp-steps": 2, "--skip-test": True}))
    tool = _tool()
    out = str(tmp_path / "fid.json")
    assert tool.main([run, "--num-probes", "5", "--probe-steps", "3", "--out", out]) == 0
    table = capsys.readouterr().out
    assert "cosine_column_sums" in table and "spearman_column_sums" in table
    rep = json.loads(open(out).read())
    assert rep["method"] == "aioli" and rep["iteration"] == 16 and rep["evaluations"] == 6
    p, dl, a_star = map(np.asarray, (rep["probe_mixtures"], rep["probe_loss_decrease"], rep["a_star"]))
    assert p.shape == (5, 3) and dl.shape == (5, 3)
    assert np.all(dl.mean(axis=1) > 0)  # training lowers the validation loss
    ref, *_ = np.linalg.lstsq(p, dl, rcond=None)
    np.testing.assert_allclose(a_star, ref.T, atol=1e-12)
    assert -1.0 <= rep["spearman_column_sums"] <= 1.0 and -1.0 <= rep["cosine_column_sums"] <= 1.0
    # the method's A is the last completed round's A_normalized
    rounds = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))
              if '"aioli_round"' in line]
    done = [r for r in rounds if "skipped" not in r]
    np.testing.assert_allclose(rep["method_a"], done[-1]["A_normalized"])
    # the probes continued the run's Adam state; Aioli's two estimators were judged on held-out probes
    assert rep["optimizer_state"] == "run"
    est = rep["estimators"]
    assert est["judge"].startswith("A* from all probes")  # 5 probes, K = 3: fewer than K held out
    for name in ("probes", "gradient"):
        assert np.asarray(est[name]["A"]).shape == (3, 3)
        assert -1.0 <= est[name]["spearman_matrix"] <= 1.0 and -1.0 <= est[name]["cosine_matrix"] <= 1.0
    assert est["gradient"]["steps"] == 4
    assert est["grad_val_batch"] == 2  # the run's micro-batch: it set no --aioli-grad-val-batch
    assert "estimator vs A*" in table
    # probes are seeded: the same command gives the same report; --grad-val-batch changes the
    # gradient estimators' validation side only
    tool.main([run, "--num-probes", "5", "--probe-steps", "3", "--grad-val-batch", "1", "--out", out + "2"])
    again = json.loads(open(out + "2").read())
    assert again["probe_loss_decrease"] == rep["probe_loss_decrease"]
    assert again["estimators"]["probes"] == est["probes"]
    assert again["estimators"]["grad_val_batch"] == 1
    assert again["estimators"]["gradient"]["A"] != est["gradient"]["A"]


def test_fidelity_tool_errors(tmp_path, capsys):
    tool = _tool()
    assert tool.main([str(tmp_path)]) == 2
    assert "config.json: not found" in capsys.readouterr().err
    assert tool.main([str(tmp_path), "--grad-val-batch", "0"]) == 2
    assert "--grad-val-batch must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_adam_state_reads_alike_from_zero_0_and_zero_2_checkpoints(tmp_path):
    """The same run at ZeRO 0 (torch state_dict) and ZeRO 2 on 2 ranks (partitioned flat state):
    every parameter's moments agree to 1e-5 relative, and the step counts are the run's."""
    import torch

    from megamix.model.gpt import GPT, GPTConfig
    from megamix.training.optim_state import load_adam_state, optimizer_order

    prefixes = make_data(str(tmp_path / "data"))
    states = []
    for stage in (0, 2):
        run = str(tmp_path / f"z{stage}")
        launch(tiny_args(prefixes, run, str(tmp_path / "cache"), iters=6, **{"--zero-stage": stage,
                                                                              "--skip-test": True}))
        cfg = json.loads(open(os.path.join(run, "config.json")).read())
        order = optimizer_order(GPT(GPTConfig(**cfg["model"])), cfg["optimizer"]["weight_decay"])
        states.append(load_adam_state(run, "iter_0000006", order))
    assert sorted(states[0]) == sorted(states[1])
    for name, s0 in states[0].items():
        s2 = states[1][name]
        assert s0["step"] == s2["step"] == 6
        for key in ("exp_avg", "exp_avg_sq"):
            assert float(torch.linalg.norm(s0[key] - s2[key])) <= 1e-5 * float(torch.linalg.norm(s0[key])), name
