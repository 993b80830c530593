"""Skill-It, DoReMi and DoGE updates against hand computations; registry and mixing flags."""

import argparse
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sim_env import LinearLawEnv, drive  # noqa: E402

from megamix.mixing.base import MixerContext, Observation, Phase  # noqa: E402
from megamix.mixing.config import MixingConfig  # noqa: E402
from megamix.mixing.doge import DoGEConfig, DoGEMixer  # noqa: E402
from megamix.mixing.doremi import DoReMiConfig, DoReMiMixer  # noqa: E402
from megamix.mixing.registry import build_mixer  # noqa: E402
from megamix.mixing.skillit import SkillItConfig, SkillItMixer, read_skill_graph  # noqa: E402
from megamix.mixing.weights_file import write_weights_file  # noqa: E402
from megamix.training.mixing_args import add_mixing_args, mixing_config_from_args  # noqa: E402

DOMAINS = ("a", "b")
CTX = MixerContext(DOMAINS, (1, 3), 100, 4, 0)
G = [[1.0, 0.5], [0.2, 1.0]]


def softmax(z):
    e = np.exp(np.asarray(z) - np.max(z))
    return e / e.sum()


@pytest.fixture
def graph_file(tmp_path):
    path = tmp_path / "graph.json"
    # stored in the other domain order: rows/cols must be matched by name
    path.write_text(json.dumps({"domains": ["b", "a"], "graph": [[1.0, 0.2], [0.5, 1.0]]}))
    return str(path)


def obs(step, steps, val=None, **signals):
    return Observation(step, steps, np.array([3.0, 3.0]), None if val is None else np.asarray(val),
                       {k: np.asarray(v) for k, v in signals.items()})


def test_skillit_updates_by_hand(graph_file):
    np.testing.assert_allclose(read_skill_graph(graph_file, DOMAINS), G)
    m = SkillItMixer(CTX, SkillItConfig(graph=graph_file, eta=0.2, window=3), 10)
    g = np.asarray(G)
    np.testing.assert_allclose(m.p, softmax(0.2 * g.sum(axis=1)))
    vals = [[4.0, 2.0], [3.0, 1.9], [2.5, 1.8], [2.0, 1.7]]
    for i, v in enumerate(vals):
        ph = m.next_phase(10 * i, 100)
        assert ph.steps == 10 and ph.evaluate
        ev = m.observe(ph, obs(10 * (i + 1), 10, v))[0]
        window = np.sum(vals[max(0, i - 2): i + 1], axis=0)
        np.testing.assert_allclose(ev["weights"], softmax(0.2 * g @ window))
        assert ev["event"] == "skillit_update"


def test_skill_graph_errors(tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text(json.dumps({"domains": ["a", "c"], "graph": G}))
    with pytest.raises(ValueError, match="g.json.*do not match"):
        read_skill_graph(str(bad), DOMAINS)
    bad.write_text(json.dumps({"domains": ["a", "b"], "graph": [[1.0]]}))
    with pytest.raises(ValueError, match="2×2"):
        read_skill_graph(str(bad), DOMAINS)


def test_doremi_update_by_hand():
    m = DoReMiMixer(CTX, DoReMiConfig(reference="ref", step_size=1.0, smoothing=1e-3), 5)
    ph = m.next_phase(0, 10)
    np.testing.assert_allclose(ph.weights, [0.5, 0.5])
    np.testing.assert_allclose(ph.loss_weights, [0.5, 0.5])
    assert ph.signals == ("excess_loss",) and ph.steps == 1
    m.observe(ph, obs(1, 1, excess_loss=[0.4, 0.0]))
    a1 = softmax(np.log([0.5, 0.5]) + [0.4, 0.0]) * (1 - 1e-3) + 1e-3 / 2
    np.testing.assert_allclose(m.w, a1)
    ph = m.next_phase(1, 9)
    np.testing.assert_allclose(ph.loss_weights, a1)
    np.testing.assert_allclose(ph.weights, [0.5, 0.5])
    m.observe(ph, obs(2, 1, excess_loss=[np.nan, 0.3]))  # no tokens of 'a': no push
    a2 = softmax(np.log(a1) + [0.0, 0.3]) * (1 - 1e-3) + 1e-3 / 2
    np.testing.assert_allclose(m.w, a2)
    np.testing.assert_allclose(m.learned_weights(), (a1 + a2) / 2)
    assert [m.next_phase(s, 10).evaluate for s in range(6)] == [False] * 4 + [True, False]


def test_doge_update_by_hand():
    m = DoGEMixer(CTX, DoGEConfig(mu=0.01), 5)
    ph = m.next_phase(0, 10)
    assert ph.signals == ("domain_grad_scores",) and ph.loss_weights is None
    m.observe(ph, obs(1, 1, domain_grad_scores=[0.002, 0.0]))
    w1 = softmax(np.log([0.5, 0.5]) + np.array([0.002, 0.0]) / 0.01)
    np.testing.assert_allclose(m.w, w1)
    np.testing.assert_allclose(m.next_phase(1, 9).weights, w1)  # samples at w
    m.observe(ph, obs(2, 1, domain_grad_scores=[0.0, 0.001]))
    w2 = softmax(np.log(w1) + np.array([0.0, 0.001]) / 0.01)
    np.testing.assert_allclose(m.w, w2)
    np.testing.assert_allclose(m.learned_weights(), (w1 + w2) / 2)


def _signals():
    return {"excess_loss": lambda p, loss: np.maximum(loss - 2.0, 0.0),
            "domain_grad_scores": lambda p, loss: np.clip(1e-3 * (loss - 3.0), 0, 5e-3)}


@pytest.mark.parametrize("method", ["skillit", "doremi", "doge"])
def test_stays_on_simplex_and_resumes_identically(method, graph_file):
    options = {"skillit": SkillItConfig(graph=graph_file), "doremi": DoReMiConfig(reference="ref")}
    cfg = MixingConfig(method=method, update_interval=7, options=options.get(method))
    a = np.array([[1.0, 0.2], [0.1, 0.5]])
    runs = []
    for roundtrip in (False, True):
        env = LinearLawEnv(a, [5.0, 4.0], 1e-3, seed=3, scale=1e-2, signal_fns=_signals())
        mixer, events = drive(build_mixer(cfg, CTX), env, 40, roundtrip=roundtrip,
                              make_mixer=lambda: build_mixer(cfg, CTX))
        runs.append((events, mixer.learned_weights().tolist(), env.trained))
        for ev in events:
            w = np.asarray(ev["weights"])
            assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)
        json.dumps(events)
    assert runs[0][:2] == runs[1][:2]
    # the phase in progress is re-normalised by Phase.from_dict on resume: equal up to rounding
    np.testing.assert_allclose([w for w, _ in runs[0][2]], [w for w, _ in runs[1][2]], rtol=1e-13)
    assert sum(steps for _, steps in runs[0][2]) == 40


def test_registry_builds_every_method(graph_file, tmp_path):
    weights = str(tmp_path / "w.json")
    write_weights_file(weights, DOMAINS, [0.25, 0.75])
    for method in ("stratified", "natural", "static", "aioli", "skillit", "doremi", "doge"):
        options = {"skillit": SkillItConfig(graph=graph_file), "doremi": DoReMiConfig(reference="r")}
        cfg = MixingConfig(method=method, update_interval=100, mixture_weights=(1.0, 3.0),
                           options=options.get(method))
        mixer = build_mixer(cfg, CTX)
        assert isinstance(mixer.next_phase(0, 100), Phase)
    with pytest.raises(ValueError, match="--skillit-graph"):
        MixingConfig(method="skillit")
    with pytest.raises(ValueError, match="--doremi-reference"):
        MixingConfig(method="doremi")


def parse(argv, data_path_weights=None, domains=DOMAINS):
    parser = add_mixing_args(argparse.ArgumentParser())
    return mixing_config_from_args(parser.parse_args(argv), data_path_weights, domains)


def test_mixing_args(tmp_path):
    cfg = parse(["--mixing-method", "aioli", "--aioli-eta", "0.5", "--no-aioli-normalize-a", "--aioli-ema", "0.1",
                 "--aioli-update", "reset", "--mixing-update-interval", "300"])
    o = cfg.options
    assert (o.eta, o.normalize_a, o.ema, o.update) == (0.5, False, 0.1, "reset")
    assert cfg.update_interval == 300 and o.lp_rounds == 2
    assert parse([]).method == "stratified"
    assert parse([], [0.3, 0.7]).method == "static"
    path = str(tmp_path / "w.json")
    write_weights_file(path, ["b", "a"], [0.75, 0.25])
    assert parse(["--mixture-weights", path]).mixture_weights == (0.25, 0.75)
    assert parse(["--mixing-method", "doge", "--doge-mu", "0.05"]).options.mu == 0.05
    late = parse(["--mixture-weights", path], domains=None)  # read by name when the mixer is built
    assert late.method == "static" and late.mixture_weights is None
    np.testing.assert_allclose(build_mixer(late, CTX).next_phase(0, 10).weights, [0.25, 0.75])


@pytest.mark.parametrize("argv,weights,match", [
    (["--aioli-eta", "2"], None, "--aioli-eta only apply to --mixing-method aioli"),
    (["--mixing-method", "doge", "--skillit-eta", "1"], None, "--skillit-eta"),
    (["--mixing-method", "aioli"], [0.5, 0.5], "contradicts --mixing-method aioli"),
    (["--mixture-weights", "x.json"], [0.5, 0.5], "weights given twice"),
    (["--mixing-method", "aioli", "--aioli-ema", "1.5"], None, "--aioli-ema"),
    (["--mixing-method", "static"], None, "needs weights"),
])
def test_mixing_args_errors(argv, weights, match):
    with pytest.raises(ValueError, match=match):
        parse(argv, weights)
