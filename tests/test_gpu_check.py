"""benchmarks/gpu_check.py stays alive in CI: its --cpu mode (tiny model, 2 gloo ranks) must pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_passes_on_cpu(tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py"), "--cpu",
                           "--workdir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "[gpu_check] PASSED" in proc.stdout
    assert proc.stdout.count("[gpu_check] tokens/s") == 2


@pytest.mark.slow
def test_gpu_check_fails_loudly(tmp_path):
    """A broken launch is a non-zero exit with the reason, not a pass."""
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py"), "--cpu",
                           "--steps", "20", "--peak-tflops", "-1", "--workdir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "[gpu_check] FAILED" in proc.stderr and "--peak-tflops" in proc.stderr
