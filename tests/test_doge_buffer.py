"""DoGE's per-domain gradient buffer is refused before training when it cannot fit."""

from __future__ import annotations

import pytest
import torch

from megamix.training.signals import check_buffer_fits


def test_a_buffer_that_fits_passes():
    check_buffer_fits(4, 1000, torch.float32, torch.device("cpu"), "--mixing-method doge")


def test_a_buffer_too_large_is_refused_with_sizes():
    with pytest.raises(ValueError, match=r"--mixing-method doge keeps 8 gradient vectors .* GiB\) but cpu has"):
        check_buffer_fits(8, 10**13, torch.bfloat16, torch.device("cpu"), "--mixing-method doge")
