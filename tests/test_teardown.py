"""Every entry point leaves the process group torn down, on a normal end and on an error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from launch import REPO, job_env

WORKER = '''
import sys
import torch.distributed as dist
from megamix.training.distributed import distributed_session

mode = sys.argv[1]
with distributed_session() as info:
    if mode == "error" and info.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    dist.barrier()
    print(f"rank {info.rank} past barrier", flush=True)
print(f"rank {info.rank} done, initialized={dist.is_initialized()}", flush=True)
'''


def _run(tmp_path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), mode]
    return subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=180, cwd=REPO)


@pytest.mark.slow
def test_normal_end_tears_the_group_down_on_every_rank(tmp_path):
    proc = _run(tmp_path, "ok")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} done, initialized=False" in proc.stdout
    assert "terminate called" not in proc.stderr


@pytest.mark.slow
def test_an_error_on_one_rank_ends_every_rank_instead_of_hanging(tmp_path):
    proc = _run(tmp_path, "error")  # a hang would hit the subprocess timeout and fail the test
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr
    assert "past barrier" not in proc.stdout
    assert not os.path.exists(tmp_path / "core")
