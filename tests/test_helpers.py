"""C++ index builders against their plain-numpy references, edge cases and input errors."""

import numpy as np
import pytest

from megamix.data.helpers import build_blending_indices, build_blending_indices_reference, build_sample_idx


def build_sample_idx_reference(sizes, doc_idx, seq_length, add_extra_token=True):
    """Plain-numpy ``build_sample_idx`` (vectorised with a search over document end positions)."""
    lengths = np.asarray(sizes, dtype=np.int64)[np.asarray(doc_idx, dtype=np.int64)]
    extra = 1 if add_extra_token else 0
    total = int(lengths.sum())
    num_samples = (total - extra) // seq_length if total - extra >= seq_length else 0
    ends = np.cumsum(lengths)
    starts = ends - lengths
    pos = np.arange(1, num_samples + 1, dtype=np.int64) * seq_length
    j = np.minimum(np.searchsorted(ends, pos + extra, side="left"), max(len(lengths) - 1, 0))
    out = np.zeros((num_samples + 1, 2), dtype=np.int64)
    out[1:, 0] = j
    out[1:, 1] = pos - starts[j] if num_samples else pos
    return out


def _stream_windows(sizes, doc_idx, seq, extra):
    """Windows read directly from the concatenated stream (what sample_idx must describe)."""
    tokens = [np.arange(s) + 1000 * d for d, s in enumerate(sizes)]
    stream = np.concatenate([tokens[d] for d in doc_idx]) if len(doc_idx) else np.zeros(0)
    n = (len(stream) - extra) // seq if len(stream) - extra >= seq else 0
    return tokens, [stream[i * seq:(i + 1) * seq + extra] for i in range(n)]


def _read(tokens, doc_idx, sidx, i, extra):
    (p0, o0), (p1, o1) = sidx[i], sidx[i + 1]
    if p0 == p1:
        return tokens[doc_idx[p0]][o0:o1 + extra]
    parts = [tokens[doc_idx[p0]][o0:]] + [tokens[doc_idx[p]] for p in range(p0 + 1, p1)]
    return np.concatenate(parts + [tokens[doc_idx[p1]][:o1 + extra]])


@pytest.mark.parametrize("extra", [True, False])
def test_sample_idx_matches_reference_and_stream(extra):
    rng = np.random.default_rng(0)
    for trial in range(400):
        n = int(rng.integers(1, 15))
        sizes = rng.integers(0, 3 if trial % 4 == 0 else 40, n).astype(np.int32)  # tiny and empty docs too
        doc_idx = rng.permutation(n).astype(np.int32 if trial % 2 else np.int64)
        seq = int(rng.integers(1, 50))  # often longer than the documents
        got = build_sample_idx(sizes, doc_idx, seq, extra)
        ref = build_sample_idx_reference(sizes, doc_idx, seq, extra)
        assert got.dtype == np.int64 and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
        tokens, windows = _stream_windows(sizes, doc_idx, seq, int(extra))
        assert got.shape[0] == len(windows) + 1
        for i, w in enumerate(windows):
            np.testing.assert_array_equal(_read(tokens, doc_idx, got, i, int(extra)), w)


def test_sample_idx_known_values():
    # docs of 5 and 3 tokens, seq 3: stream of 8 tokens -> (8-1)//3 = 2 samples
    got = build_sample_idx(np.array([5, 3], np.int32), np.array([0, 1]), 3)
    np.testing.assert_array_equal(got, [[0, 0], [0, 3], [1, 1]])
    assert build_sample_idx(np.array([2], np.int32), np.array([0]), 4).shape == (1, 2)  # too short: 0 samples


def test_sample_idx_bad_inputs():
    with pytest.raises(IndexError, match="doc_idx"):
        build_sample_idx(np.array([5, 3], np.int32), np.array([0, 2]), 3)
    with pytest.raises(ValueError, match="seq_length"):
        build_sample_idx(np.array([5], np.int32), np.array([0]), 0)
    with pytest.raises(ValueError, match="one-dimensional"):
        build_sample_idx(np.ones((2, 2), np.int32), np.array([0]), 2)
    with pytest.raises(ValueError, match="integers"):
        build_sample_idx(np.array([5.0]), np.array([0]), 2)
    with pytest.raises(ValueError, match="negative"):
        build_sample_idx(np.array([-1, 4], np.int32), np.array([0, 1]), 2)


def _random_weights(rng, k):
    w = rng.random(k) * (rng.random(k) > 0.3)
    if w.sum() == 0:
        w[int(rng.integers(k))] = 1.0
    return w


def test_blending_matches_reference():
    rng = np.random.default_rng(1)
    for trial in range(200):
        k = 1 if trial % 10 == 0 else int(rng.integers(2, 12))
        w = _random_weights(rng, k)
        n = int(rng.integers(0, 400))
        start = rng.integers(0, 1000, k)
        d, s = build_blending_indices(w, n, start)
        d_ref, s_ref = build_blending_indices_reference(w, n, start)
        assert d.dtype == np.int16 and s.dtype == np.int64
        np.testing.assert_array_equal(d, d_ref)
        np.testing.assert_array_equal(s, s_ref)


def test_blending_lag_bound_zero_weights_and_continuation():
    rng = np.random.default_rng(2)
    for _ in range(100):
        k = int(rng.integers(1, 9))
        w = _random_weights(rng, k)
        w = w / w.sum()
        n = int(rng.integers(1, 600))
        start = rng.integers(0, 50, k)
        d, s = build_blending_indices(w, n, start)
        counts = np.cumsum(np.eye(k, dtype=np.int64)[d], axis=0)
        lag = counts - np.arange(1, n + 1)[:, None] * w[None, :]
        assert np.abs(lag).max() < 1.0  # every prefix within one sample of weight * length
        assert not np.any(counts[:, w == 0])  # zero-weight domains are never drawn
        for dom in range(k):  # each domain continues from its start count: start, start+1, ...
            np.testing.assert_array_equal(s[d == dom], start[dom] + np.arange(np.sum(d == dom)))


def test_blending_ties_go_to_lowest_index():
    d, _ = build_blending_indices(np.array([1.0, 1.0, 1.0]), 6)
    np.testing.assert_array_equal(d, [0, 1, 2, 0, 1, 2])


def test_blending_many_domains_int16():
    w = np.random.default_rng(3).random(1000)
    d, s = build_blending_indices(w, 3000)
    d_ref, s_ref = build_blending_indices_reference(w, 3000)
    np.testing.assert_array_equal(d, d_ref)
    np.testing.assert_array_equal(s, s_ref)


@pytest.mark.parametrize("weights,match", [
    ([float("nan"), 1.0], "finite"), ([-0.5, 1.0], ">= 0"), ([0.0, 0.0], "positive sum"), ([], "at least one domain"),
])
def test_blending_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        build_blending_indices(np.array(weights), 10)


def test_blending_bad_counts():
    with pytest.raises(ValueError, match="one per domain"):
        build_blending_indices(np.array([0.5, 0.5]), 10, np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="num_samples"):
        build_blending_indices(np.array([1.0]), -1)


def test_extension_validates_directly():
    from megamix import _helpers
    with pytest.raises(ValueError, match="weights"):
        _helpers.build_blending_indices(np.array([np.nan]), 3, np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="start_counts"):
        _helpers.build_blending_indices(np.array([1.0]), 3, np.zeros(2, np.int64))
    with pytest.raises(IndexError, match="doc_idx"):
        _helpers.build_sample_idx(np.array([3], np.int32), np.array([5], np.int64), 2, True)
