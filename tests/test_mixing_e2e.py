"""Every mixing method end to end in the phase loop (2-process gloo runs on the tiny fixture data).

Aioli's rounds are recomputed here from the logged evaluations and the MIXING.md formulas
with plain numpy (independently of megamix.mixing.law).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from launch import REPO, events, launch, launch_and_crash, make_data, read_metrics, tiny_args, strip_timing

AIOLI = {"--mixing-method": "aioli", "--aioli-lp-rounds": 1, "--aioli-lp-steps": 2, "--skip-test": True}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_data(str(root)), str(root / "cache")


def _run(data, run_dir, iters, **over):
    prefixes, cache = data
    args = tiny_args(prefixes, str(run_dir), cache, iters=iters, **over)
    launch(args)
    return str(run_dir)


def check_weights(run: str, iters: int) -> list[np.ndarray]:
    """Every logged mixture is on the simplex; train steps use their phase's weights; all steps trained;
    every phase records its start-up time (benchmarks/bench_mixing.py charges the probe phases' to Aioli)."""
    phases = events(run, "phase")
    train = events(run, "train")
    assert [e["step"] for e in train] == list(range(1, iters + 1))
    assert all(0.0 <= ph["begin_s"] < 60.0 for ph in phases)
    for e in phases + train:
        w = np.array(list(e["weights"].values()))
        assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-9, e
    by_step = {}
    for ph in phases:
        for s in range(ph["step"] + 1, ph["step"] + ph["steps"] + 1):
            by_step[s] = ph["weights"]
    for e in train:
        assert e["weights"] == by_step[e["step"]]
    return [np.array(list(ph["weights"].values())) for ph in phases]


# ------------------------------------------------------------ Aioli, recomputed
def _q(k: int, f: float) -> np.ndarray:
    q = np.full((k, k), (1 - f) / (k - 1))
    q[np.arange(k), np.arange(k)] = f
    return q


def _b_from_evals(run: str, rnd: dict, k: int, domains: list[str]) -> np.ndarray:
    """B of one round from the 'eval' events around its probe phases (val source)."""
    val = {e["step"]: np.array([e["val_loss"][d] for d in domains]) for e in events(run, "eval")}
    b = np.zeros((k, k))
    probes = [p for p in events(run, "phase") if p["kind"] == "probe" and p["info"]["round"] == rnd["round"]]
    assert [domains.index(p["info"]["domain"]) for p in probes] == rnd["probe_order"]
    for p in probes:
        b[:, domains.index(p["info"]["domain"])] += val[p["step"]] - val[p["step"] + p["steps"]]
    return b / (len(probes) // k)


def _b_from_train(run: str, rnd: dict, k: int, domains: list[str]) -> np.ndarray:
    """B of one round from the per-step training losses of each probe's two halves (train source)."""
    train = {e["step"]: e for e in events(run, "train")}

    def mean(ph: dict) -> np.ndarray:
        steps = [train[s] for s in range(ph["step"] + 1, ph["step"] + ph["steps"] + 1)]
        tok = np.array([[e["domain_tokens"][d] for d in domains] for e in steps])
        loss = np.array([[e["domain_loss"][d] or 0.0 for d in domains] for e in steps])
        return (loss * tok).sum(axis=0) / tok.sum(axis=0)

    b = np.zeros((k, k))
    probes = [p for p in events(run, "phase") if p["kind"] == "probe" and p["info"]["round"] == rnd["round"]]
    for first, second in zip(probes[::2], probes[1::2]):
        assert (first["info"]["half"], second["info"]["half"]) == (0, 1)
        b[:, domains.index(first["info"]["domain"])] += 2.0 * (mean(first) - mean(second))
    return b / (len(probes) // (2 * k))


def recompute_rounds(run: str, eta: float, gamma: float | None, f: float = 0.75, val_source: bool = True) -> None:
    """Check every aioli_round record against an independent numpy recomputation."""
    rounds = [r for r in events(run, "aioli_round") if "skipped" not in r]
    assert rounds, "no completed Aioli round"
    domains = rounds[0]["domains"]
    k = len(domains)
    e_prev, p_prev = None, np.full(k, 1 / k)
    for r in rounds:
        q = _q(k, f)
        np.testing.assert_allclose(r["probe_weights"], q, rtol=0, atol=1e-15)
        b = np.array(r["B"])
        if val_source:
            np.testing.assert_allclose(b, _b_from_evals(run, r, k, domains), rtol=0, atol=1e-12)
        else:
            np.testing.assert_allclose(b, _b_from_train(run, r, k, domains), rtol=0, atol=1e-9)
        a = b @ np.linalg.inv(q.T)
        np.testing.assert_allclose(r["A"], a, rtol=0, atol=1e-12)
        an = a - a.min() if a.min() < 0 else a.copy()
        an = an / an.sum()
        np.testing.assert_allclose(r["A_normalized"], an, rtol=0, atol=1e-12)
        e = an if (e_prev is None or gamma is None) else (1 - gamma) * an + gamma * e_prev
        np.testing.assert_allclose(r["E"], e, rtol=0, atol=1e-12)
        np.testing.assert_allclose(r["weights_before"], p_prev, rtol=0, atol=1e-12)
        p = p_prev * np.exp(eta * e.sum(axis=0))
        p = p / p.sum()
        np.testing.assert_allclose(r["weights"], p, rtol=0, atol=1e-12)
        nxt = [ph for ph in events(run, "phase") if ph["step"] == r["step"]]
        assert nxt and np.allclose(list(nxt[0]["weights"].values()), p, atol=1e-12)  # trained at the new p
        e_prev, p_prev = e, p


def test_aioli_val_rounds_recompute_exactly(data, tmp_path):
    run = _run(data, tmp_path / "aioli", 27, **AIOLI, **{"--aioli-ema": 0.5, "--aioli-eta": 0.8,
                                                           "--mixture-out": str(tmp_path / "w.json")})
    check_weights(run, 27)
    # 27 steps of rounds of 10: two whole rounds; the last one's training part absorbs the 7 left over
    assert len([r for r in events(run, "aioli_round") if "skipped" not in r]) == 2
    assert [ph["steps"] for ph in events(run, "phase") if ph["kind"] == "train"] == [4, 4 + 7]
    recompute_rounds(run, eta=0.8, gamma=0.5)
    learned = json.loads(open(tmp_path / "w.json").read())
    assert learned["method"] == "aioli" and abs(sum(learned["weights"]) - 1) < 1e-12


@pytest.mark.slow
def test_aioli_train_loss_source(data, tmp_path):
    run = _run(data, tmp_path / "aioli_train", 24, **{**AIOLI, "--aioli-loss-source": "train",
                                                       "--aioli-lp-steps": 4, "--mixing-update-interval": 16})
    check_weights(run, 24)
    assert not [e for e in events(run, "eval") if e["step"] < 12]  # no evaluation passes during probes
    recompute_rounds(run, eta=1.0, gamma=None, val_source=False)


# ----------------------------------------------------------- fixed mixtures
def test_mixture_out_feeds_a_static_run(data, tmp_path):
    out = str(tmp_path / "strat.json")
    strat = _run(data, tmp_path / "strat", 12, **{"--mixture-out": out, "--skip-test": True})
    ws = check_weights(strat, 12)
    assert all(np.allclose(w, 1 / 3) for w in ws)
    with open(out, "w") as f:  # edit the learned file: a static run must train on exactly these weights
        json.dump({"domains": ["math", "code", "prose"], "weights": [0.5, 0.2, 0.3]}, f)
    static = _run(data, tmp_path / "static", 12, **{"--mixture-weights": out, "--skip-test": True})
    for w in check_weights(static, 12):
        np.testing.assert_allclose(w, [0.2, 0.3, 0.5])
    assert json.loads(open(os.path.join(static, "config.json")).read())["mixing"]["method"] == "static"


@pytest.mark.slow
def test_static_weights_in_data_path_and_natural(data, tmp_path):
    prefixes, cache = data
    weighted = ["0.6", prefixes[0], "0.1", prefixes[1], "0.3", prefixes[2]]
    run = str(tmp_path / "static")
    launch(["--data-path", *weighted] + tiny_args(prefixes, run, cache, iters=12, **{"--skip-test": True})[4:])
    for w in check_weights(run, 12):
        np.testing.assert_allclose(w, [0.6, 0.1, 0.3])
    nat = _run(data, tmp_path / "natural", 12, **{"--mixing-method": "natural", "--skip-test": True})
    ws = check_weights(nat, 12)
    assert all(np.array_equal(w, ws[0]) for w in ws)


# ------------------------------------------------------------------ baselines
@pytest.mark.slow
def test_skillit_with_a_hand_written_graph(data, tmp_path):
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps({"domains": ["prose", "code", "math"],
                                 "graph": [[1.0, 0.2, 0.0], [0.5, 1.0, 0.3], [0.0, 0.1, 1.0]]}))
    run = _run(data, tmp_path / "skillit", 20, **{"--mixing-method": "skillit", "--skillit-graph": str(graph),
                                                   "--mixing-update-interval": 5, "--skip-test": True})
    ws = check_weights(run, 20)
    g = np.array([[1.0, 0.5, 0.3], [0.2, 1.0, 0.0], [0.1, 0.0, 1.0]])  # rows/cols reordered to code, prose, math
    e0 = np.exp(0.2 * g.sum(axis=1))
    np.testing.assert_allclose(ws[0], e0 / e0.sum(), atol=1e-12)
    updates = events(run, "skillit_update")
    assert len(updates) == 4
    hist = []
    for u in updates:
        hist = (hist + [u["val_loss"]])[-3:]
        z = np.exp(0.2 * g @ np.sum(hist, axis=0))
        np.testing.assert_allclose(u["weights"], z / z.sum(), atol=1e-12)


@pytest.mark.slow
def test_doremi_with_a_stratified_reference(data, tmp_path):
    ref = _run(data, tmp_path / "ref", 10, **{"--skip-test": True})
    out = str(tmp_path / "doremi.json")
    run = _run(data, tmp_path / "doremi", 12, **{"--mixing-method": "doremi", "--doremi-reference": ref,
                                                  "--mixture-out": out, "--skip-test": True})
    check_weights(run, 12)
    ups = events(run, "doremi_update")
    assert len(ups) == 12
    for u in ups:
        w = np.array(u["weights"])
        assert abs(w.sum() - 1) < 1e-9 and np.all(w >= 1e-3 / 3 - 1e-12)
        assert np.all(np.array(u["excess_loss"]) >= 0)
    np.testing.assert_allclose(json.loads(open(out).read())["weights"], ups[-1]["average"], atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1])
def test_doge_zero_stages(data, tmp_path, stage):
    run = _run(data, tmp_path / f"doge{stage}", 10, **{"--mixing-method": "doge", "--zero-stage": stage,
                                                       "--skip-test": True})
    check_weights(run, 10)
    ups = events(run, "doge_update")
    assert len(ups) == 10 and all(np.all(np.isfinite(u["scores"])) for u in ups)
    assert not np.allclose(ups[-1]["weights"], 1 / 3)  # the scores moved the weights


# ----------------------------------------------------------------- resume, prior
@pytest.mark.slow
def test_aioli_resume_mid_probe_is_exact(data, tmp_path):
    prefixes, cache = data
    over = {**AIOLI, "--aioli-lp-steps": 4, "--mixing-update-interval": 16, "--save-interval": 3}
    ref = _run(data, tmp_path / "ref", 24, **over)
    run = str(tmp_path / "killed")
    args = tiny_args(prefixes, run, cache, iters=24, **over)
    launch_and_crash(args, crash_after_step=10)  # last checkpoint at 9: inside probe 2 of round 0
    assert f"resumed from {run}/iter_0000009 at iteration 9" in launch(args).stdout
    assert [e["step"] for e in events(run, "train")] == list(range(1, 25))
    assert strip_timing(events(run, "aioli_round")) == strip_timing(events(ref, "aioli_round"))
    assert [e["loss"] for e in events(run, "train")] == [e["loss"] for e in events(ref, "train")]
    assert strip_timing(read_metrics(run)) == strip_timing(read_metrics(ref))


@pytest.mark.slow
def test_aioli_prior_from_a_learned_weights_file(data, tmp_path):
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"domains": ["code", "prose", "math"], "weights": [0.6, 0.3, 0.1],
                                 "method": "doremi"}))
    run = _run(data, tmp_path / "prior", 20, **AIOLI, **{"--aioli-prior": str(prior), "--aioli-prior-steps": 4})
    check_weights(run, 20)
    first = events(run, "phase")[0]
    assert first["kind"] == "prior" and first["steps"] == 4
    np.testing.assert_allclose(list(first["weights"].values()), [0.6, 0.3, 0.1])
    rounds = [r for r in events(run, "aioli_round") if "skipped" not in r]
    np.testing.assert_allclose(rounds[0]["weights_before"], [0.6, 0.3, 0.1])  # EG starts from the prior
    p = np.array([0.6, 0.3, 0.1]) * np.exp(np.array(rounds[0]["E"]).sum(axis=0))
    np.testing.assert_allclose(rounds[0]["weights"], p / p.sum(), atol=1e-12)


# ------------------------------------------------------------ sweep + fit pipeline
@pytest.mark.slow
def test_sweep_fit_dml_then_static(data, tmp_path):
    prefixes, cache = data
    out = str(tmp_path / "sweep")
    base = tiny_args(prefixes[:2], "x", cache, iters=10, **{"--save": None, "--load": None, "--skip-test": True})
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    fit = str(tmp_path / "dml.json")
    # DML's law has K + 2 = 4 parameters per domain, so the smallest fittable sweep has 4 mixtures
    cmd = [sys.executable, os.path.join(REPO, "tools", "mixing_sweep.py"), "--kind", "dml", "--out", out,
           "--num-mixtures", "4", "--fit-out", fit, "--", *base]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = json.loads(open(os.path.join(out, "sweep.json")).read())
    assert [r["name"] for r in sweep["runs"]] == ["p0.10_0.90", "p0.37_0.63", "p0.63_0.37", "p0.90_0.10"]
    assert sweep["total_steps"] == 40
    fitted = json.loads(open(fit).read())
    assert fitted["method"] == "dml" and fitted["extra_steps"] == 40
    static = _run((prefixes[:2], cache), tmp_path / "static", 10, **{"--mixture-weights": fit, "--skip-test": True})
    for w in check_weights(static, 10):
        np.testing.assert_allclose(w, fitted["weights"], atol=1e-12)


# ------------------------------------------------------- Aioli's gradient estimator
GRAD = {"--mixing-method": "aioli", "--aioli-estimator": "gradient", "--aioli-grad-interval": 2,
        "--mixing-update-interval": 8, "--aioli-ema": 0.1, "--aioli-eta": 0.2, "--aioli-update": "reset",
        "--skip-test": True}


def _check_gradient_rounds(run: str, rounds: int, estimator: str = "gradient") -> None:
    """Whole rounds trained at p (no probe phase), each with a finite A from its estimated steps."""
    recs = events(run, "aioli_round")
    assert len(recs) == rounds and all(r["estimator"] == estimator and "skipped" not in r for r in recs)
    assert all(r["estimated_steps"] == 4 - (r["round"] == 0) for r in recs)  # steps 2,4,6 in round 0 (not 0)
    assert all(np.all(np.isfinite(r["A"])) for r in recs)
    assert {ph["kind"] for ph in events(run, "phase")} == {"train"}


@pytest.mark.slow
@pytest.mark.parametrize("stage, estimator", [(0, "gradient"), (2, "gradient"), (2, "lookahead")])
def test_aioli_gradient_estimator_on_two_ranks(data, tmp_path, stage, estimator):
    """Two gloo ranks: every rank reaches the same A (the loop's broadcast-and-check of each round's
    weights would stop the run otherwise), read from the optimizer's state at ZeRO 0 and 2; the
    lookahead's virtual steps on ZeRO 2's flat parameter buffers are undone."""
    run = _run(data, tmp_path / f"{estimator}{stage}", 16,
               **{**GRAD, "--zero-stage": stage, "--aioli-estimator": estimator})
    check_weights(run, 16)
    _check_gradient_rounds(run, 2, estimator)
    weights = [r["weights"] for r in events(run, "aioli_round")]
    assert not np.allclose(weights[0], 1 / 3)  # the estimate moved p


@pytest.mark.slow
def test_aioli_gradient_resume_mid_round_is_exact(data, tmp_path):
    """Kill -9 mid-round and resume: the same rounds to the bit — here under the perplexity
    objective, whose weights come from the evaluation stored in the mixer's state."""
    prefixes, cache = data
    over = {**GRAD, "--save-interval": 3, "--aioli-objective": "perplexity"}
    ref = _run(data, tmp_path / "ref", 24, **over)
    run = str(tmp_path / "killed")
    args = tiny_args(prefixes, run, cache, iters=24, **over)
    launch_and_crash(args, crash_after_step=10)  # last checkpoint at 9: round 1, one estimate summed
    assert f"resumed from {run}/iter_0000009 at iteration 9" in launch(args).stdout
    _check_gradient_rounds(run, 3)
    for r in events(run, "aioli_round"):
        loss = np.asarray(r["objective_losses"])
        np.testing.assert_array_equal(loss, r["val_loss_before"] if r["round"] else r["val_loss_batches"])
        w = np.exp(loss) / np.exp(loss).mean()
        p = np.full(3, 1 / 3) * np.exp(0.2 * (w @ np.asarray(r["E"])))  # reset: EG from uniform
        np.testing.assert_allclose(r["weights"], p / p.sum(), atol=1e-12)
    assert strip_timing(events(run, "aioli_round")) == strip_timing(events(ref, "aioli_round"))
    assert strip_timing(read_metrics(run)) == strip_timing(read_metrics(ref))


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["gradient", "lookahead"])
def test_aioli_gradient_estimates_only_observe(data, tmp_path, estimator):
    """Round 0 trains at exactly 1/K: with estimates at steps 2, 4, 6 its per-step losses equal stratified's
    (the lookahead's virtual steps leave the parameters bit for bit as they were)."""
    strat = _run(data, tmp_path / "strat", 8, **{"--mixing-method": "stratified", "--skip-test": True,
                                                 "--mixing-update-interval": 8})
    grad = _run(data, tmp_path / "grad", 8, **{**GRAD, "--aioli-estimator": estimator})
    assert events(grad, "aioli_round")[0]["estimated_steps"] == 3
    assert [e["loss"] for e in events(grad, "train")] == [e["loss"] for e in events(strat, "train")]
