"""Megatron pretraining sampler: slicing of global batches across ranks, resume, errors."""

import numpy as np
import pytest

from megamix.data.sampler import MegatronPretrainingSampler, micro_batch_indices


def test_micro_batches_partition_each_global_batch():
    g, m, dp = 24, 2, 3
    for step in range(3):
        per_rank = [micro_batch_indices(step, g, m, r, dp) for r in range(dp)]
        assert all(len(mbs) == g // (m * dp) for mbs in per_rank)
        everything = np.sort(np.concatenate([np.concatenate(mbs) for mbs in per_rank]))
        np.testing.assert_array_equal(everything, np.arange(step * g, (step + 1) * g))
    # Megatron slicing: chunk c of step 1, rank 2 -> 24 + c*6 + [4, 6)
    np.testing.assert_array_equal(micro_batch_indices(1, g, m, 2, dp)[1], [34, 35])


def test_sampler_matches_micro_batch_indices():
    g, m, dp = 16, 2, 2
    for r in range(dp):
        it = iter(MegatronPretrainingSampler(0, m, r, dp, g))
        for step in range(4):
            for expected in micro_batch_indices(step, g, m, r, dp):
                assert next(it) == expected.tolist()


def test_sampler_resume_yields_the_remaining_items():
    g, m, dp, total = 12, 3, 2, 60
    for r in range(dp):
        full = list(MegatronPretrainingSampler(0, m, r, dp, g, total_samples=total))
        assert len(full) == total // (m * dp)
        for consumed in (0, 12, 24, 42, 60):
            resumed = list(MegatronPretrainingSampler(consumed, m, r, dp, g, total_samples=total))
            assert resumed == full[consumed // (m * dp):]
            assert len(MegatronPretrainingSampler(consumed, m, r, dp, g, total_samples=total)) == len(resumed)


@pytest.mark.parametrize("args,match", [
    ((0, 2, 0, 3, 16), "not divisible"), ((0, 0, 0, 1, 8), "--micro-batch-size"),
    ((0, 2, 3, 3, 18), "rank"), ((3, 2, 0, 2, 8), "multiple"), ((0, 2, 0, 1, -8), "--global-batch-size"),
])
def test_sampler_errors(args, match):
    with pytest.raises(ValueError, match=match):
        MegatronPretrainingSampler(*args)


def test_micro_batch_indices_errors():
    with pytest.raises(ValueError, match="not divisible"):
        micro_batch_indices(0, 10, 4, 0, 1)
    with pytest.raises(ValueError, match="step"):
        micro_batch_indices(-1, 8, 4, 0, 1)
