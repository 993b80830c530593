"""Repetition accounting: per-domain epochs, a warning per new epoch, --max-domain-epochs per phase."""

from __future__ import annotations

import numpy as np
import pytest

from data_fixtures import write_domains
from megamix.data.blend import BlendedDataset
from megamix.data.domain import DomainDataset
from megamix.data.schedule import MixtureSchedule
from megamix.training.repetition import RepetitionLimitError, RepetitionTracker

NAMES = ["big", "small"]
G = 4


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rep")
    big, small = (write_domains(tmp, [n], num_docs=d, mean_len=40)[0] for n, d in (("big", 60), ("small", 8)))
    return [DomainDataset(p, n, i, "train", 8, (1.0, 0.0, 0.0), 3, str(tmp / "cache"))
            for i, (p, n) in enumerate(((big, "big"), (small, "small")))]


def _blend(domains, segments):
    schedule = MixtureSchedule(NAMES, G)
    blend = BlendedDataset(domains, schedule)
    for steps, weights in segments:
        schedule.append(steps * G, weights)
    blend.sync()
    return blend


def test_epochs_count_drawn_samples_and_warn_once_per_new_epoch(domains):
    spe = [ds.samples_per_epoch for ds in domains]
    assert spe[1] < 40 < spe[0]  # "small" repeats within the run below, "big" does not
    blend = _blend(domains, [(30, [0.5, 0.5])])
    warnings = []
    tracker = RepetitionTracker(blend, spe, G, 0, warn=lambda line, event: warnings.append((line, event)))
    for it in range(1, 31):
        tracker.after_step(it)
        drawn = np.bincount(blend.domain_ids(0, it * G), minlength=2)
        np.testing.assert_allclose(tracker.epochs(), drawn / np.asarray(spe))
    small = [e for _, e in warnings]
    expected = int(np.ceil(60 / spe[1])) - 1  # 60 samples of "small": epochs 2.. each warned once
    assert [e["epoch"] for e in small] == list(range(2, 2 + expected)) and all(e["domain"] == "small" for e in small)
    first = small[0]["step"]  # the step whose batch draws sample number spe + 1
    assert np.bincount(blend.domain_ids(0, (first - 1) * G), minlength=2)[1] <= spe[1]
    assert np.bincount(blend.domain_ids(0, first * G), minlength=2)[1] > spe[1]
    assert "'small' starts epoch 2" in warnings[0][0] and "--max-domain-epochs" in warnings[0][0]
    # resuming mid-run starts from the same counts and does not warn again for epochs already started
    again = []
    resumed = RepetitionTracker(blend, spe, G, 20, warn=lambda line, event: again.append(event))
    np.testing.assert_array_equal(resumed.counts, np.bincount(blend.domain_ids(0, 80), minlength=2))
    for it in range(21, 31):
        resumed.after_step(it)
    assert again == [e for e in small if e["step"] > 20]


def test_max_domain_epochs_refuses_the_phase_naming_domain_step_and_flag(domains):
    spe = [ds.samples_per_epoch for ds in domains]
    blend = _blend(domains, [(4, [0.5, 0.5])])
    tracker = RepetitionTracker(blend, spe, G, 0, max_epochs=1.0)
    tracker.check_phase(0)  # 8 samples of "small" fit in one epoch
    blend.schedule.append(40 * G, [0.1, 0.9])
    blend.sync()
    with pytest.raises(RepetitionLimitError) as err:
        tracker.check_phase(4)
    msg = str(err.value)
    assert "domain 'small'" in msg and "--max-domain-epochs 1" in msg
    step = int(msg.split(" at step ")[1].split()[0])
    assert np.bincount(blend.domain_ids(0, (step - 1) * G), minlength=2)[1] <= spe[1]
    assert np.bincount(blend.domain_ids(0, step * G), minlength=2)[1] > spe[1]
    RepetitionTracker(blend, spe, G, 0, max_epochs=100.0).check_phase(4)  # a looser limit passes


def test_flag_is_validated_and_may_change_on_resume():
    from megamix.training.checkpoint import config_differences
    from megamix.training.config import TrainingConfig

    with pytest.raises(ValueError, match="--max-domain-epochs must be > 0"):
        TrainingConfig(max_domain_epochs=0)
    saved = {"training": {"max_domain_epochs": 1.0, "seed": 1}}
    assert config_differences(saved, {"training": {"max_domain_epochs": 2.0, "seed": 1}}) == []
