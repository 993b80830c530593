"""Aioli against the simulated linear-law environment: what it learns, logs and resumes."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sim_env import LinearLawEnv, drive  # noqa: E402

from megamix.mixing import law  # noqa: E402
from megamix.mixing.aioli import AioliConfig, AioliMixer  # noqa: E402
from megamix.mixing.base import MixerContext  # noqa: E402
from megamix.mixing.weights_file import write_weights_file  # noqa: E402

DOMAINS = ("code", "law", "math")
A_TRUE = np.array([[1.0, 0.2, 0.0], [0.1, 0.5, 0.0], [0.0, 0.3, 2.0]])
SCALE = 1e-3


def ctx(seed=0):
    return MixerContext(DOMAINS, (10, 20, 30), 2000, 8, seed)


def run(cfg=None, total=1000, interval=200, noise=0.0, roundtrip=False, seed=0, env=None):
    cfg = cfg or AioliConfig()
    make = lambda: AioliMixer(ctx(seed), cfg, interval)  # noqa: E731
    env = env or LinearLawEnv(A_TRUE, [5.0, 5.0, 5.0], noise, seed=1, scale=SCALE)
    record = []
    mixer, events = drive(make(), env, total, roundtrip=roundtrip, make_mixer=make, record=record)
    json.dumps(events)
    return mixer, [e for e in events if e["event"] == "aioli_round"], record


def test_learn_params_recovers_a():
    _, rounds, _ = run(noise=2e-5)
    for r in rounds:
        np.testing.assert_allclose(np.asarray(r["A"]) / (SCALE * 10), A_TRUE, atol=0.15)


def test_eg_moves_toward_law_optimum_and_beats_uniform():
    mixer, rounds, _ = run(total=2000)
    best = int(np.argmax(A_TRUE.sum(axis=0)))  # linear law: the vertex with the largest column sum
    w = [r["weights"][best] for r in rounds]
    assert all(b > a for a, b in zip(w, w[1:])) and w[-1] > 0.6
    env_u = LinearLawEnv(A_TRUE, [5.0] * 3, 0.0, scale=SCALE)
    env_u.train(np.full(3, 1 / 3), 2000)
    env_a = LinearLawEnv(A_TRUE, [5.0] * 3, 0.0, scale=SCALE)
    drive(AioliMixer(ctx(), AioliConfig(), 200), env_a, 2000)
    assert env_a.loss.mean() < env_u.loss.mean()
    assert mixer.learned_weights()[best] > 1 / 3


def test_round_record_recomputes():
    cfg = AioliConfig(ema=0.3, eta=2.0)
    _, rounds, _ = run(cfg, noise=1e-4)
    e_prev = None
    for r in rounds:
        q, b = np.asarray(r["probe_weights"]), np.asarray(r["B"])
        np.testing.assert_allclose(q, law.probe_mixtures(3, 0.75))
        a = b @ np.linalg.inv(q.T)
        np.testing.assert_allclose(r["A"], a, atol=1e-12)
        shifted = a - min(a.min(), 0)
        np.testing.assert_allclose(r["A_normalized"], shifted / shifted.sum(), atol=1e-12)
        e = np.asarray(r["A_normalized"]) if e_prev is None else 0.7 * np.asarray(r["A_normalized"]) + 0.3 * e_prev
        np.testing.assert_allclose(r["E"], e, atol=1e-12)
        p = np.asarray(r["weights_before"]) * np.exp(2.0 * e.sum(axis=0))
        np.testing.assert_allclose(r["weights"], p / p.sum(), atol=1e-12)
        assert sorted(r["probe_order"]) == sorted(list(range(3)) * 2) and len(r["probe_losses"]) == 6
        e_prev = e
    for r1, r2 in zip(rounds, rounds[1:]):
        assert r2["weights_before"] == r1["weights"]


def test_b_columns_are_loss_decreases_of_probes():
    _, rounds, record = run(total=200)
    r = rounds[0]
    losses = [r["val_loss_before"]] + r["probe_losses"]
    b = np.zeros((3, 3))
    for j, d in enumerate(r["probe_order"]):
        b[:, d] += np.asarray(losses[j]) - np.asarray(losses[j + 1])
    np.testing.assert_allclose(r["B"], b / 2)
    kinds = [x["kind"] for x in record]
    assert kinds == ["eval"] + ["probe"] * 6 + ["train"]
    assert [x["steps"] for x in record] == [0] + [10] * 6 + [140]


def test_normalisation_off_and_f_one_and_diagonal():
    _, rounds, _ = run(AioliConfig(normalize_a=False))
    assert rounds[0]["A_normalized"] == rounds[0]["A"]
    _, rounds, _ = run(AioliConfig(one_hot_factor=1.0))
    np.testing.assert_allclose(rounds[0]["A"], rounds[0]["B"])
    _, rounds, _ = run(AioliConfig(diagonal=True))
    b = np.asarray(rounds[0]["B"])
    np.testing.assert_allclose(rounds[0]["A"], np.diag(np.diag(b) / 0.75))


def test_reset_update_starts_from_uniform_each_round():
    _, rounds, _ = run(AioliConfig(update="reset", ema=0.5))
    for r in rounds:
        p = np.exp(1.0 * np.asarray(r["E"]).sum(axis=0))
        np.testing.assert_allclose(r["weights"], p / p.sum(), atol=1e-12)


def test_prior_trains_first_and_anchors_eg(tmp_path):
    prior = [0.6, 0.3, 0.1]
    path = str(tmp_path / "prior.json")
    write_weights_file(path, DOMAINS, prior)
    _, rounds, record = run(AioliConfig(prior=path, prior_steps=50, update="reset"), total=650)
    assert record[0]["kind"] == "prior" and record[0]["steps"] == 50
    np.testing.assert_allclose(record[0]["weights"], prior)
    assert record[1]["kind"] == "probe"  # the prior's end-of-phase eval is reused
    np.testing.assert_allclose(rounds[0]["weights_before"], prior)
    for r in rounds:
        p = np.asarray(prior) * np.exp(np.asarray(r["E"]).sum(axis=0))
        np.testing.assert_allclose(r["weights"], p / p.sum(), atol=1e-12)


@pytest.mark.parametrize("source, objective", [("val", "loss"), ("train", "loss"), ("val", "perplexity")])
def test_resume_at_every_phase_boundary_is_identical(source, objective):
    cfg = AioliConfig(loss_source=source, ema=0.2, objective=objective)
    m1, r1, rec1 = run(cfg, total=730, noise=1e-4)
    m2, r2, rec2 = run(cfg, total=730, noise=1e-4, roundtrip=True)
    assert r1 == r2 and rec1 == rec2 and len(r1) == 3  # 730 = 3 whole rounds of 200 + 130 in the last
    np.testing.assert_allclose(m1.learned_weights(), m2.learned_weights())
    assert sum(x["steps"] for x in rec1) == 730


def test_train_loss_source_estimates_a():
    _, rounds, record = run(AioliConfig(loss_source="train"))
    assert not any(x["kind"] == "eval" for x in record) and record[0]["steps"] == 5
    for r in rounds:
        np.testing.assert_allclose(np.asarray(r["A"]) / (SCALE * 10), A_TRUE, atol=1e-9)
    _, rounds, _ = run(AioliConfig(loss_source="train", lp_steps=7), interval=300)
    np.testing.assert_allclose(np.asarray(rounds[0]["A"]) / (SCALE * 7), A_TRUE, atol=1e-9)
    with pytest.raises(ValueError, match="--aioli-lp-steps >= 2"):
        AioliConfig_ = AioliConfig(loss_source="train", lp_steps=1)
        AioliMixer(ctx(), AioliConfig_, 200)


class NaNEnv(LinearLawEnv):
    """Reports NaN validation loss for one domain during a window of steps."""

    def __init__(self, *args, bad=(220, 240), **kw):
        super().__init__(*args, **kw)
        self.bad, self.t = bad, 0

    def train(self, p, steps, signals=()):
        self.t += steps
        return super().train(p, steps, signals)

    def evaluate(self):
        v = super().evaluate()
        if self.bad[0] <= self.t < self.bad[1]:
            v[1] = np.nan
        return v


def test_non_finite_round_keeps_weights():
    env = NaNEnv(A_TRUE, [5.0] * 3, 0.0, scale=SCALE)
    _, rounds, _ = run(total=800, env=env)
    assert "skipped" in rounds[1] and rounds[1]["weights"] == rounds[1]["weights_before"]
    assert "skipped" not in rounds[2] and rounds[2]["weights"] != rounds[2]["weights_before"]


def test_short_run_and_cut_rounds():
    mixer, rounds, record = run(total=250)
    assert sum(x["steps"] for x in record) == 250 and len(rounds) == 1
    _, rounds, record = run(total=30)  # fewer steps than one round's probes: trains at p
    assert [x["kind"] for x in record] == ["train"] and record[0]["steps"] == 30


def test_config_errors():
    with pytest.raises(ValueError, match="--mixing-update-interval"):
        AioliMixer(ctx(), AioliConfig(), 60)
    with pytest.raises(ValueError, match="one-hot-factor"):
        AioliMixer(ctx(), AioliConfig(one_hot_factor=0.3), 200)
    with pytest.raises(ValueError, match="--aioli-update"):
        AioliConfig(update="sometimes")


def test_prior_steps_without_prior_warm_up_on_uniform():
    mixer = AioliMixer(ctx(), AioliConfig(prior_steps=10), 200)
    first = mixer.next_phase(0, 1000)
    assert first.kind == "prior" and first.steps == 10
    assert np.allclose(first.weights, 1.0 / mixer.ctx.num_domains)


def test_seed_changes_probe_order_only():
    _, a, _ = run(seed=0)
    _, b, _ = run(seed=5)
    assert [r["probe_order"] for r in a] != [r["probe_order"] for r in b]
    np.testing.assert_allclose(a[0]["A"], b[0]["A"], atol=1e-9)


@pytest.mark.parametrize("total,prior_steps,rounds,last_train", [
    (1000, 0, 10, 85),        # N = T·U: ten whole rounds, nothing left over
    (1030, 0, 10, 85 + 30),   # the remainder goes to the last round's training part
    (1099, 0, 10, 85 + 99),   # even a remainder of U − 1 starts no eleventh round
    (1000, 30, 9, 85 + 70),   # after a prior stage the rounds are counted from its end
])
def test_whole_rounds_only(total, prior_steps, rounds, last_train):
    cfg = AioliConfig(lp_rounds=1, lp_steps=5, prior_steps=prior_steps)
    _, events, record = run(cfg, total=total, interval=100)
    assert sum(x["steps"] for x in record) == total
    probes = [x for x in record if x["kind"] == "probe"]
    trains = [x for x in record if x["kind"] == "train"]
    assert len(events) == rounds and len(probes) == 3 * rounds and all(x["steps"] == 5 for x in probes)
    assert len(trains) == rounds and [x["steps"] for x in trains] == [85] * (rounds - 1) + [last_train]
    assert record[-1]["kind"] == "train" and record[-1]["step"] == total


# ---------------------------------------------------------------- gradient estimator
def _gradient_value(noise_rng=None, noise=0.0):
    """A per-step gradient estimate as the training side reports it: lr·⟨v_i, P g_j⟩ = SCALE·A_TRUE."""
    k = len(DOMAINS)

    def value(p, loss):
        v = np.zeros((k + 1, k + 1))
        v[:k, :k] = SCALE * A_TRUE + (noise * noise_rng.normal(size=(k, k)) if noise else 0.0)
        v[k, :k], v[:k, k], v[k, k] = 1.0, loss, 1.0
        return v
    return value


def _gradient_run(cfg, total=1000, roundtrip=False, noise=0.0):
    env = LinearLawEnv(A_TRUE, [5.0] * 3, 0.0, scale=SCALE,
                       signal_fns={"aioli_gradient": _gradient_value(np.random.default_rng(0), noise)})
    return run(cfg, total=total, roundtrip=roundtrip, env=env)


def test_gradient_estimator_recovers_a_without_probes():
    """The round's A is the per-step law coefficient (to float rounding); every step trains at p."""
    cfg = AioliConfig(estimator="gradient", ema=0.3, eta=2.0)
    mixer, rounds, record = _gradient_run(cfg)
    assert [x["kind"] for x in record] == ["train"] * 5 and [x["steps"] for x in record] == [200] * 5
    assert all(x["signals"] == ["aioli_gradient"] for x in record)
    e_prev = None
    for r in rounds:
        assert r["estimator"] == "gradient" and r["estimated_steps"] == 1  # the env reports the phase mean
        np.testing.assert_allclose(r["A"], SCALE * A_TRUE, rtol=1e-12)
        a = np.asarray(r["A"])
        an = (a - min(a.min(), 0)) / (a - min(a.min(), 0)).sum()
        np.testing.assert_allclose(r["A_normalized"], an, atol=1e-12)
        e = an if e_prev is None else 0.7 * an + 0.3 * e_prev
        p = np.asarray(r["weights_before"]) * np.exp(2.0 * e.sum(axis=0))
        np.testing.assert_allclose(r["weights"], p / p.sum(), atol=1e-12)
        e_prev = e
    best = int(np.argmax(A_TRUE.sum(axis=0)))
    assert rounds[-1]["weights"][best] > 0.6 and mixer.learned_weights()[best] > 1 / 3


def test_gradient_estimator_resumes_identically_and_skips_an_unestimated_round():
    cfg = AioliConfig(estimator="gradient", update="reset", ema=0.1, eta=0.2)
    m1, r1, rec1 = _gradient_run(cfg, total=730, noise=1e-4)
    m2, r2, rec2 = _gradient_run(cfg, total=730, noise=1e-4, roundtrip=True)
    assert r1 == r2 and len(r1) == 3 and rec1[-1]["steps"] == 330  # the tail is absorbed
    # the phase in progress is re-normalised by Phase.from_dict on resume: equal up to rounding
    assert [{**x, "weights": None} for x in rec1] == [{**x, "weights": None} for x in rec2]
    np.testing.assert_allclose([x["weights"] for x in rec1], [x["weights"] for x in rec2], rtol=1e-13)
    mixer = AioliMixer(ctx(), cfg, 200)
    phase = mixer.next_phase(0, 400)
    from megamix.mixing.base import Observation
    events = mixer.observe(phase, Observation(step=200, steps=200, train_loss=np.ones(3), val_loss=np.ones(3)))
    assert "no step of this round was estimated" in events[0]["skipped"]
    np.testing.assert_allclose(mixer.p, 1 / 3)


def test_gradient_estimator_flags():
    with pytest.raises(ValueError, match="--aioli-estimator must be"):
        AioliConfig(estimator="hessian")
    with pytest.raises(ValueError, match="--aioli-grad-interval must be >= 1"):
        AioliConfig(estimator="gradient", grad_interval=0)
    with pytest.raises(ValueError, match="--aioli-grad-val-batch must be >= 1"):
        AioliConfig(estimator="gradient", grad_val_batch=0)
    AioliMixer(ctx(), AioliConfig(estimator="gradient"), 10)  # no probe steps to fit in a round


def test_gradient_estimate_interval_defaults_to_half_a_round_and_fits_in_one():
    """Without --aioli-grad-interval an estimate is taken twice a round (one at a 1-step round); an
    interval longer than the round is refused, because rounds between estimates would keep p."""
    assert AioliConfig(estimator="gradient").estimate_interval(50) == 25
    assert AioliConfig(estimator="gradient").estimate_interval(1) == 1
    assert AioliConfig(estimator="gradient", grad_interval=7).estimate_interval(50) == 7
    assert AioliMixer(ctx(), AioliConfig(estimator="gradient"), 10).grad_interval == 5
    AioliMixer(ctx(), AioliConfig(estimator="gradient", grad_interval=10), 10)  # one estimate a round
    with pytest.raises(ValueError, match=r"--aioli-grad-interval \(11\) is longer than a round "
                                         r"\(--mixing-update-interval 10\)"):
        AioliMixer(ctx(), AioliConfig(estimator="gradient", grad_interval=11), 10)
    AioliMixer(ctx(), AioliConfig(grad_interval=500), 200)  # the probes take no gradient estimates


# ---------------------------------------------------------------- objective
def _check_perplexity_rounds(rounds, eta, ema):
    """Each round's record recomputes: w = exp(L) / mean exp(L), p ∝ p · exp(η w·E); L is the
    evaluation before the round (the first probe-free round: its estimates' micro-batches)."""
    e_prev = None
    for n, r in enumerate(rounds):
        assert r["objective"] == "perplexity"
        loss = np.asarray(r["val_loss_before"] if r["val_loss_before"] is not None else r["val_loss_batches"])
        assert r["val_loss_before"] is not None or (n == 0 and r["estimator"] == "gradient")
        np.testing.assert_array_equal(r["objective_losses"], loss)
        w = np.exp(loss) / np.exp(loss).mean()
        np.testing.assert_allclose(r["objective_weights"], w, rtol=1e-12)
        an = np.asarray(r["A_normalized"])
        e = an if e_prev is None else (1 - ema) * an + ema * e_prev
        np.testing.assert_allclose(r["E"], e, atol=1e-12)
        p = np.asarray(r["weights_before"]) * np.exp(eta * (w @ e))
        np.testing.assert_allclose(r["weights"], p / p.sum(), atol=1e-12)
        e_prev = e


def test_perplexity_objective_weighs_e_rows_by_exp_loss():
    env = LinearLawEnv(A_TRUE, [3.0, 5.0, 4.0], 1e-4, seed=1, scale=SCALE)
    _, rounds, _ = run(AioliConfig(objective="perplexity", ema=0.3, eta=2.0), env=env)
    assert len(rounds) == 5 and max(rounds[0]["objective_weights"]) > 1.5  # the loss-5 domain weighs most
    _check_perplexity_rounds(rounds, 2.0, 0.3)
    _, grounds, _ = _gradient_run(AioliConfig(estimator="gradient", objective="perplexity", ema=0.3, eta=2.0))
    assert grounds[-1]["objective_weights"] != [1.0, 1.0, 1.0]  # the losses have drifted apart by then
    _check_perplexity_rounds(grounds, 2.0, 0.3)
    _, loss_rounds, _ = run(AioliConfig(ema=0.3, eta=2.0), env=LinearLawEnv(A_TRUE, [3.0, 5.0, 4.0], 1e-4, seed=1,
                                                                             scale=SCALE))
    assert loss_rounds[0]["objective"] == "loss" and "objective_weights" not in loss_rounds[0]


def test_perplexity_objective_lowers_the_average_perplexity_at_the_same_average_loss():
    """A = I: every mixture lowers the summed loss alike, so the loss objective stays uniform; the
    average perplexity falls fastest by training the domain whose loss is highest."""
    finals = {}
    for objective in ("loss", "perplexity"):
        env = LinearLawEnv(np.eye(3), [3.0, 4.0, 5.0], 0.0, scale=SCALE)
        mixer, _, _ = run(AioliConfig(objective=objective), total=2000, env=env)
        finals[objective] = (env.loss, mixer.learned_weights())
    (loss_l, p_l), (loss_p, p_p) = finals["loss"], finals["perplexity"]
    np.testing.assert_allclose(p_l, 1 / 3, atol=1e-9)
    assert p_p[2] > 0.5 and p_p[0] < p_p[1] < p_p[2]
    assert loss_p.mean() == pytest.approx(loss_l.mean(), abs=1e-9)
    assert np.exp(loss_p).mean() < np.exp(loss_l).mean() - 0.5


def test_objective_flags():
    with pytest.raises(ValueError, match="--aioli-objective must be"):
        AioliConfig(objective="accuracy")
    with pytest.raises(ValueError, match="needs --aioli-loss-source val"):
        AioliConfig(objective="perplexity", loss_source="train")
    AioliConfig(objective="perplexity", loss_source="train", estimator="gradient")  # losses from its own batches
