"""Weights files, tools/fit_mixing_law.py on synthetic run directories, tools/plot_mixture.py."""

import importlib.util
import json
import os

import numpy as np
import pytest

from megamix.mixing import law
from megamix.mixing.weights_file import read_weights_file, write_weights_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fit_tool = load_tool("fit_mixing_law")
plot_tool = load_tool("plot_mixture")

DOMAINS = ["code", "law", "math"]
C = np.array([2.0, 1.5, 2.5])
B = np.array([1.5, 2.0, 1.0])
T = -np.array([[3.0, 0.5, 0.2], [0.4, 2.0, 0.1], [0.3, 0.2, 4.0]])


# ---------------------------------------------------------------- weights files
def test_weights_file_round_trip_by_name(tmp_path):
    path = str(tmp_path / "w.json")
    write_weights_file(path, ["b", "a", "c"], [2.0, 1.0, 1.0], {"method": "test"})
    obj = json.loads(open(path).read())
    assert obj["method"] == "test" and obj["weights"] == [0.5, 0.25, 0.25]
    np.testing.assert_allclose(read_weights_file(path, ["a", "b", "c"]), [0.25, 0.5, 0.25])
    assert os.listdir(tmp_path) == ["w.json"]  # no temporary left behind
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"a": 1, "b": 3}))
    np.testing.assert_allclose(read_weights_file(str(plain), ["b", "a"]), [0.75, 0.25])


@pytest.mark.parametrize("content,match", [
    ({"a": 1}, r"missing \['b'\]"),
    ({"a": 1, "b": 1, "z": 1}, r"unknown \['z'\]"),
    ({"a": -1, "b": 1}, "'a' must be a finite number >= 0"),
    ({"a": "x", "b": 1}, "'a' must be a finite number"),
    ({"a": 0, "b": 0}, "positive sum"),
    ({"domains": ["a", "b"], "weights": [1]}, "equal length"),
    ([0.5, 0.5], "JSON object"),
])
def test_weights_file_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match) as err:
        read_weights_file(str(path), ["a", "b"])
    assert "bad.json" in str(err.value)


def test_weights_file_missing_and_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_weights_file(str(tmp_path / "nope.json"), ["a"])
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(ValueError, match="x.json: not valid JSON"):
        read_weights_file(str(tmp_path / "x.json"), ["a"])
    with pytest.raises(ValueError, match="non-negative"):
        write_weights_file(str(tmp_path / "y.json"), ["a", "b"], [1.0, -1.0])


# ---------------------------------------------------------------- run directories
def make_run(root, name, weights, first, last, domains=DOMAINS, steps=100, method="static"):
    run = root / name
    run.mkdir()
    order = list(domains)
    (run / "config.json").write_text(json.dumps({"domains": order, "mixing": {
        "method": method, "mixture_weights": None if weights is None else list(map(float, weights))}}))
    lines = [{"event": "eval", "step": 0, "val_loss": dict(zip(order, map(float, first)))},
             {"event": "train", "step": steps, "loss": 1.0},
             {"event": "eval", "step": steps, "val_loss": dict(zip(order, map(float, last)))}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(run)


def synthetic_sweep(tmp_path, n=14):
    rng = np.random.default_rng(0)
    runs, mixes = [], rng.dirichlet(np.ones(3), size=n)
    for i, p in enumerate(mixes):
        runs.append(make_run(tmp_path, f"run{i}", p, [6.0] * 3, law.dml_loss(p, C, B, T)))
    return runs, mixes


def test_grid_picks_best_observed_run(tmp_path):
    runs, mixes = synthetic_sweep(tmp_path)
    out = str(tmp_path / "grid.json")
    assert fit_tool.main(runs + ["--method", "grid", "--out", out]) == 0
    avg = [np.mean(law.dml_loss(p, C, B, T)) for p in mixes]
    obj = json.loads(open(out).read())
    np.testing.assert_allclose(obj["weights"], mixes[int(np.argmin(avg))])
    assert obj["extra_steps"] == 100 * len(runs) and obj["domains"] == DOMAINS


def test_dml_recovers_the_law_minimiser(tmp_path):
    runs, _ = synthetic_sweep(tmp_path)
    out = str(tmp_path / "dml.json")
    assert fit_tool.main(runs + ["--method", "dml", "--out", out]) == 0
    obj = json.loads(open(out).read())
    truth = law.minimize_on_simplex(lambda x: float(np.mean(law.dml_loss(x, C, B, T))), 3)
    np.testing.assert_allclose(obj["weights"], truth, atol=0.02)
    assert obj["fit_rmse"] < 1e-3
    got = np.mean(law.dml_loss(np.asarray(obj["weights"]), C, B, T))
    assert got == pytest.approx(np.mean(law.dml_loss(truth, C, B, T)), abs=1e-4)


def test_skillit_graph_from_single_domain_runs(tmp_path):
    first = np.array([6.0, 5.0, 4.0])
    lasts = {0: [3.0, 4.0, 4.0], 1: [5.4, 2.0, 0.0], 2: [6.0, 4.5, 1.0]}
    runs = []
    for i, last in lasts.items():
        # domains listed in another order in one run: matched by name
        order = DOMAINS if i != 1 else DOMAINS[::-1]
        idx = [DOMAINS.index(d) for d in order]
        w = np.eye(3)[i][idx]
        runs.append(make_run(tmp_path, f"single{i}", w, first[idx], np.asarray(last)[idx], domains=order))
    out = str(tmp_path / "graph.json")
    assert fit_tool.main(runs + ["--method", "skillit-graph", "--out", out]) == 0
    g = np.asarray(json.loads(open(out).read())["graph"])
    expect = (first - np.asarray([lasts[i] for i in range(3)])) / first
    expect[1, 2] = 0.5  # an off-diagonal 1 becomes 0.5
    np.testing.assert_allclose(g, expect)


def test_tool_errors(tmp_path, capsys):
    runs, _ = synthetic_sweep(tmp_path, n=3)
    assert fit_tool.main(runs + ["--method", "dml", "--out", str(tmp_path / "o.json")]) == 2
    assert "at least" in capsys.readouterr().err
    other = make_run(tmp_path, "other", [0.5, 0.5], [1, 1], [1, 1], domains=["code", "web"])
    assert fit_tool.main([runs[0], other, "--method", "grid", "--out", str(tmp_path / "o.json")]) == 2
    assert "differ" in capsys.readouterr().err
    assert fit_tool.main([str(tmp_path / "missing"), "--method", "grid", "--out", "o.json"]) == 2
    assert "missing/config.json: not found" in capsys.readouterr().err
    assert fit_tool.main(runs + ["--method", "skillit-graph", "--out", str(tmp_path / "g.json")]) == 2
    assert "not a single-domain run" in capsys.readouterr().err
    with open(os.path.join(runs[0], "metrics.jsonl"), "a") as fh:
        fh.write("{broken\n")
    assert fit_tool.main(runs + ["--method", "grid", "--out", str(tmp_path / "o.json")]) == 2
    assert "metrics.jsonl:4" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.json")


def test_plot_mixture_writes_png(tmp_path):
    run = tmp_path / "aioli_run"
    run.mkdir()
    events = []
    for i, w in enumerate([[0.5, 0.5], [0.7, 0.3], [0.2, 0.8]]):
        events.append({"event": "phase", "step": 10 * i, "steps": 10, "kind": "train",
                       "weights": {"a": w[0], "b": w[1]}, "info": {}})
        events.append({"event": "eval", "step": 10 * (i + 1), "val_loss": {"a": 5 - i, "b": 4 - i / 2},
                       "val_ppl": {}})
    events.append({"event": "phase", "step": 30, "steps": 0, "kind": "eval", "weights": {"a": 1, "b": 0}})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    domains, x, ys = plot_tool.proportions(events)
    assert domains == ["a", "b"] and x == [0, 10, 10, 20, 20, 30] and ys[0] == [0.5, 0.5, 0.7, 0.7, 0.2, 0.2]
    out = tmp_path / "plots" / "mix.png"
    assert plot_tool.main([str(run), str(run / "metrics.jsonl"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert plot_tool.main([str(tmp_path / "none"), "--out", str(out)]) == 2


# ---------------------------------------------------------------- tools/aioli_rounds.py
rounds_tool = load_tool("aioli_rounds")


def _round(r, p, e, after, **extra):
    return {"event": "aioli_round", "round": r, "step": 50 * (r + 1), "domains": ["lit", "math"],
            "weights_before": p, "E": e, "weights": after, **extra}


def test_aioli_rounds_direction_and_summary(tmp_path, capsys):
    """The centred EG direction is w @ E minus its mean; skipped rounds and the last round stay out of the t;
    the mixture figures are the training phases' (probes and a step after the last phase do not count)."""
    e1, e2, e3 = [[0.4, 0.1], [0.2, 0.3]], [[0.5, 0.1], [0.1, 0.3]], [[0.1, 0.1], [0.1, 0.7]]
    phase = lambda step, steps, kind, lit: {"event": "phase", "step": step, "steps": steps, "kind": kind,  # noqa: E731
                                            "weights": {"lit": lit, "math": 1.0 - lit}}
    events = [phase(0, 10, "prior", 0.5), phase(10, 2, "probe", 0.9), phase(12, 30, "train", 0.5),
              _round(0, [0.5, 0.5], e1, [0.55, 0.45], objective="loss"),
              {"event": "aioli_round", "round": 1, "skipped": "no estimate"}, phase(42, 30, "train", 0.55),
              _round(2, [0.55, 0.45], e2, [0.6, 0.4], objective="loss"), phase(72, 30, "train", 0.6),
              _round(3, [0.6, 0.4], e3, [0.3, 0.7], objective="loss"), {"event": "train", "step": 102}]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    rounds, phases = rounds_tool.read_run(str(run))
    assert [r["round"] for r in rounds] == [0, 2, 3]
    assert [ph["kind"] for ph in phases] == ["prior", "train", "train", "train"]
    np.testing.assert_allclose(rounds_tool.direction(rounds[0])[1], [0.1, -0.1])  # column sums 0.6, 0.4
    s = rounds_tool.summarize(rounds, phases)
    assert s["direction_rounds"] == 2  # rounds 0 and 2 (both +0.1 for lit); round 3, the last, left out
    np.testing.assert_allclose(s["direction_mean"], [0.1, -0.1])
    np.testing.assert_allclose(s["direction_sd"], [0.0, 0.0], atol=1e-12)
    lit = (10 * 0.5 + 30 * 0.5 + 30 * 0.55 + 30 * 0.6) / 100  # step-weighted over prior and train phases
    np.testing.assert_allclose(s["p_mean"], [lit, 1.0 - lit])
    np.testing.assert_allclose(s["p_last"], [0.6, 0.4])  # the last round's 0.3 never trained; the probe's 0.9 is out
    np.testing.assert_allclose([s["p_min"][0], s["p_max"][0]], [0.5, 0.6])
    every = rounds_tool.summarize(rounds, phases, all_rounds=True)  # lit: +0.1, +0.1, -0.3
    assert every["direction_rounds"] == 3
    np.testing.assert_allclose(every["direction_t"][0], (-0.1 / 3) / (np.std([0.1, 0.1, -0.3], ddof=1) / np.sqrt(3)))
    ppl = _round(0, [0.5, 0.5], e1, [0.5, 0.5], objective="perplexity", objective_losses=[np.log(3.0), 0.0])
    w, g = rounds_tool.direction(ppl)
    np.testing.assert_allclose(w, [1.5, 0.5])
    np.testing.assert_allclose(g, np.array([0.7, 0.3]) - 0.5)  # w @ E = [1.5*0.4 + 0.5*0.2, 1.5*0.1 + 0.5*0.3]
    rounds_tool.main([str(run), "--rounds"])
    assert "lit" in capsys.readouterr().out
    (tmp_path / "plain.jsonl").write_text(json.dumps({"event": "train", "step": 1}) + "\n")
    with pytest.raises(SystemExit, match="plain.jsonl: no completed aioli_round"):
        rounds_tool.read_run(str(tmp_path / "plain.jsonl"))
    with pytest.raises(SystemExit, match="none.*not found"):
        rounds_tool.read_run(str(tmp_path / "none"))
