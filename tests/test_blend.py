"""MixtureSchedule and BlendedDataset: proportions, domain continuity across segments, resume, errors."""

import json

import numpy as np
import pytest

from data_fixtures import write_domains
from megamix.data.blend import BlendedDataset
from megamix.data.domain import DomainDataset
from megamix.data.schedule import MixtureSchedule, Segment, normalize_weights

NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blend")
    prefixes = write_domains(tmp, NAMES, num_docs=30, mean_len=40)
    return [DomainDataset(p, n, i, "train", 8, (0.9, 0.05, 0.05), 3, str(tmp / "cache"))
            for i, (p, n) in enumerate(zip(prefixes, NAMES))]


# ---------------------------------------------------------------- schedule
def test_schedule_append_normalises_and_places_segments():
    s = MixtureSchedule(NAMES, global_batch_size=4)
    assert s.append(8, [1, 1, 2]) == Segment(0, 8, (0.25, 0.25, 0.5))
    s.append(4, [0, 0, 3])
    assert s.total_samples == 12 and [seg.start for seg in s.segments] == [0, 8]


@pytest.mark.parametrize("weights,match", [
    ([float("nan"), 1, 1], "finite"), ([-1, 1, 1], ">= 0"), ([0, 0, 0], "positive sum"),
    ([1, 1], "one per domain"), ([], "non-empty"), (["x", 1, 1], "numbers"),
])
def test_normalize_weights_rejects_bad_weights(weights, match):
    with pytest.raises(ValueError, match=f"mixture weights.*{match}"):
        normalize_weights(weights, 3, "mixture weights")


@pytest.mark.parametrize("n,match", [(0, ">= 1"), (6, "whole number of global batches")])
def test_schedule_rejects_bad_segments(n, match):
    with pytest.raises(ValueError, match=match):
        MixtureSchedule(NAMES, global_batch_size=4).append(n, [1, 1, 1])


@pytest.mark.parametrize("weights,match", [([-1, 1, 1], ">= 0"), ([1, 1], "one per domain"), ([0.5, 0.2, 0.2], "1")])
def test_stored_schedule_weights_are_checked(weights, match):
    data = {"version": 1, "domains": NAMES, "global_batch_size": None,
            "segments": [{"start": 0, "num_samples": 4, "weights": weights}]}
    with pytest.raises(ValueError, match=f"mixture schedule: segment at 0.*{match}"):
        MixtureSchedule.from_dict(data)


def test_schedule_round_trip_exact(tmp_path):
    s = MixtureSchedule(NAMES, global_batch_size=2)
    s.append(10, [0.1, 0.7, 0.2])
    s.append(6, [1 / 3, 1 / 7, 0.5])
    path = tmp_path / "run" / "schedule.json"
    s.save(str(path))
    loaded = MixtureSchedule.load(str(path))
    assert loaded == s and loaded.segments == s.segments  # bit-exact weights
    assert [p.name for p in path.parent.iterdir()] == ["schedule.json"]  # no temporary left
    data = json.loads(path.read_text())
    data["segments"][1]["start"] = 11
    with pytest.raises(ValueError, match="contiguous"):
        MixtureSchedule.from_dict(data)


# ---------------------------------------------------------------- blend
def domain_sample_indices(blend, start, stop):
    """Domain sample index of each global sample in ``[start, stop)``."""
    return np.array([blend.locate(g)[1] for g in range(start, stop)], dtype=np.int64)


def _segment_assignment(blend, seg):
    return blend.domain_ids(seg.start, seg.stop), domain_sample_indices(blend, seg.start, seg.stop)


def test_blend_lag_bound_per_segment(domains):
    s = MixtureSchedule(NAMES)
    for w in ([0.2, 0.3, 0.5], [0.6, 0.0, 0.4], [1, 1, 1]):
        s.append(97, w)
    blend = BlendedDataset(domains, s)
    for seg in s.segments:
        d, _ = _segment_assignment(blend, seg)
        counts = np.cumsum(np.eye(3, dtype=np.int64)[d], axis=0)
        lag = counts - np.arange(1, seg.num_samples + 1)[:, None] * np.array(seg.weights)
        assert np.abs(lag).max() < 1.0


def test_weight_change_never_repeats_or_skips(domains):
    s = MixtureSchedule(NAMES)
    blend = BlendedDataset(domains, s)
    for w in ([0.5, 0.5, 0.0], [0.1, 0.1, 0.8], [0.0, 1.0, 0.0], [0.3, 0.3, 0.4]):
        s.append(50, w)
        assert blend.sync() == 1
    d = blend.domain_ids(0, len(blend))
    k = domain_sample_indices(blend, 0, len(blend))
    for dom in range(3):
        np.testing.assert_array_equal(k[d == dom], np.arange(np.sum(d == dom)))  # 0, 1, 2, ... exactly
    np.testing.assert_array_equal(blend.cursors(), np.bincount(d, minlength=3))
    assert len(blend) == s.total_samples == 200


def test_items_and_batches_come_from_their_domain(domains):
    s = MixtureSchedule(NAMES)
    s.append(40, [0.2, 0.5, 0.3])
    blend = BlendedDataset(domains, s)
    gs = np.array([39, 0, 17, 5, 5])
    batch = blend.get_batch(gs)
    for row, g in enumerate(gs.tolist()):
        d, k = blend.locate(g)
        item = blend[g]
        assert item["domain_id"] == d == batch["domain_id"][row]
        np.testing.assert_array_equal(item["tokens"], domains[d][k]["tokens"])
        np.testing.assert_array_equal(batch["tokens"][row], item["tokens"])
        np.testing.assert_array_equal(batch["labels"][row], item["labels"])
    with pytest.raises(IndexError, match="outside the blended dataset"):
        blend[40]
    with pytest.raises(IndexError, match="outside the blended dataset"):
        blend.get_batch(np.array([0, 41]))


def test_resume_from_dict_rebuilds_identically(domains):
    s = MixtureSchedule(NAMES)
    blend = BlendedDataset(domains, s)
    for w in ([0.25, 0.25, 0.5], [0.9, 0.05, 0.05]):
        s.append(64, w)
        blend.sync()
    resumed = BlendedDataset(domains, MixtureSchedule.from_dict(json.loads(json.dumps(s.to_dict()))))
    np.testing.assert_array_equal(resumed.domain_ids(0, 128), blend.domain_ids(0, 128))
    np.testing.assert_array_equal(domain_sample_indices(resumed, 0, 128), domain_sample_indices(blend, 0, 128))
    np.testing.assert_array_equal(resumed.get_batch(np.arange(128))["tokens"],
                                  blend.get_batch(np.arange(128))["tokens"])


def test_blend_reaches_later_epochs(domains):
    s = MixtureSchedule(NAMES)
    s.append(3 * len(domains[0]), [1.0, 0.0, 0.0])  # three epochs of domain a
    blend = BlendedDataset(domains, s)
    assert blend.cursors()[0] == 3 * len(domains[0])
    assert all(domains[0].is_cached(e) for e in range(3))
    tokens = blend.get_batch(np.arange(len(blend)))["tokens"]
    assert tokens.shape == (len(blend), 8)


def test_blend_mismatched_domains(domains):
    with pytest.raises(ValueError, match="same domains in the same order"):
        BlendedDataset(domains, MixtureSchedule(["a", "c", "b"]))
