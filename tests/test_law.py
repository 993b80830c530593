"""The shared mixing-law math against hand computations and synthetic ground truth."""

import numpy as np
import pytest

from megamix.mixing import law


def test_eg_step_matches_formula_and_is_stable():
    p = np.array([0.2, 0.3, 0.5])
    g = np.array([1.0, -2.0, 0.5])
    expect = p * np.exp(0.7 * g)
    np.testing.assert_allclose(law.eg_step(p, g, 0.7), expect / expect.sum())
    big = law.eg_step(p, np.array([1e4, 0.0, -1e4]), 1.0)
    assert np.all(np.isfinite(big)) and big[0] == pytest.approx(1.0)
    assert law.eg_step(np.array([0.0, 1.0]), np.array([5.0, 0.0]), 1.0)[0] == 0.0


def test_probe_mixtures_rows_and_bounds():
    q = law.probe_mixtures(4, 0.7)
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    assert np.allclose(np.diag(q), 0.7) and q[0, 1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="one-hot factor"):
        law.probe_mixtures(4, 0.25)


def test_solve_a_inverts_the_law_and_special_cases():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (4, 4))
    q = law.probe_mixtures(4, 0.6)
    b = a @ q.T
    np.testing.assert_allclose(law.solve_a(b, q), a, atol=1e-12)
    np.testing.assert_allclose(law.solve_a(b, law.probe_mixtures(4, 1.0), f=1.0), b)
    np.testing.assert_allclose(law.solve_a(b, q, diagonal=True, f=0.6), np.diag(np.diag(b) / 0.6))


def test_normalize_a():
    a = np.array([[1.0, -1.0], [0.0, 2.0]])
    shifted = a + 1.0
    np.testing.assert_allclose(law.normalize_a(a), shifted / shifted.sum())
    pos = np.array([[1.0, 3.0], [0.0, 4.0]])
    np.testing.assert_allclose(law.normalize_a(pos), pos / 8.0)
    np.testing.assert_array_equal(law.normalize_a(np.zeros((2, 2))), np.zeros((2, 2)))


def test_ema():
    a, e = np.eye(2), np.ones((2, 2))
    np.testing.assert_allclose(law.ema(None, a, 0.1), a)
    np.testing.assert_allclose(law.ema(e, a, None), a)
    np.testing.assert_allclose(law.ema(e, a, 0.1), 0.9 * a + 0.1 * e)


def test_laws_predict():
    a = np.array([[1.0, 0.5], [0.0, 2.0]])
    p = np.array([0.25, 0.75])
    np.testing.assert_allclose(law.linear_dynamic_predict([3.0, 4.0], a, p), [3.0 - 0.625, 4.0 - 1.5])
    c, b = np.array([1.0, 2.0]), np.array([0.5, 0.25])
    np.testing.assert_allclose(law.log_linear_loss(p, c, b, a), c + b * np.exp(-(a @ p)))
    np.testing.assert_allclose(law.dml_loss(p, c, b, -a), law.log_linear_loss(p, c, b, a))


def test_fit_linear_dynamic_recovers_a():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (3, 3))
    p = rng.dirichlet(np.ones(3), size=40)
    dl = p @ a.T + 1e-4 * rng.normal(size=(40, 3))
    np.testing.assert_allclose(law.fit_linear_dynamic(p, dl), a, atol=5e-3)
    with pytest.raises(ValueError, match=r"\(n, K\)"):
        law.fit_linear_dynamic(p, dl[:, :2])


def test_fit_log_linear_recovers_curves():
    rng = np.random.default_rng(2)
    c, b = np.array([2.0, 1.5, 3.0]), np.array([1.0, 2.0, 0.5])
    t = -np.array([[2.0, 0.3, 0.0], [0.5, 1.5, 0.2], [0.0, 0.2, 3.0]])
    p = rng.dirichlet(np.ones(3), size=30)
    loss = np.stack([law.dml_loss(x, c, b, t) for x in p])
    c2, b2, t2 = law.fit_log_linear(p, loss, seed=0)
    test = rng.dirichlet(np.ones(3), size=10)
    pred = np.stack([law.dml_loss(x, c2, b2, t2) for x in test])
    true = np.stack([law.dml_loss(x, c, b, t) for x in test])
    np.testing.assert_allclose(pred, true, atol=2e-3)


def test_minimize_on_simplex_finds_known_minimum():
    target = np.array([0.1, 0.6, 0.3])
    x = law.minimize_on_simplex(lambda p: float(np.sum((p - target) ** 2)), 3, seed=0)
    np.testing.assert_allclose(x, target, atol=1e-4)
    vertex = law.minimize_on_simplex(lambda p: float(-p[2]), 3, seed=0)
    np.testing.assert_allclose(vertex, [0, 0, 1], atol=1e-6)
