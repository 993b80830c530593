"""Two "nodes" on one machine: torchrun --nnodes 2 --node-rank 0|1, one process each (LOCAL_RANK 0 on both).

What differs from one node is that local rank 0 is no longer global rank 0. megamix
assumes that --save and --data-cache-path are on a filesystem every node shares (as
Megatron's cache does): *global* rank 0 alone writes metrics, megamix's checkpoint files
and the data cache, while every other rank waits at a barrier and then memory-maps them.
This test checks that, that both ranks computed the same mixture for every phase, and that
killing node 0 mid-run and relaunching both nodes ends exactly like a one-node run of the
same two ranks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from launch import REPO, job_env, events, launch, make_data, read_metrics, tiny_args, strip_timing

MIX = {"--mixing-method": "aioli", "--aioli-lp-rounds": 1, "--aioli-lp-steps": 1, "--mixing-update-interval": 8,
       "--save-interval": 4, "--skip-test": True, "--eval-samples-per-domain": 4}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args: list[str], out: str, watch: list[str], crash_after: int = 0) -> list[subprocess.CompletedProcess]:
    """Launch node 0 and node 1 (one process each) against a local static rendezvous; wait for both."""
    port = _port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
               os.path.join(REPO, "tests", "record_writes.py"), out, ",".join(watch), str(crash_after), *args]
        procs.append(subprocess.Popen(cmd, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


def _jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_nodes_write_once_agree_and_resume_exactly(tmp_path):
    data = tmp_path / "data"
    prefixes = make_data(str(data))
    ref_dir, run_dir, cache, rec1, rec2 = (str(tmp_path / n) for n in ("ref", "run", "cache2", "rec1", "rec2"))
    launch(tiny_args(prefixes, ref_dir, str(data / "cache"), iters=16, **MIX))  # one node, two processes

    args = tiny_args(prefixes, run_dir, cache, iters=16, **MIX)
    crashed = _two_nodes(args, rec1, [run_dir, cache], crash_after=10)
    assert crashed[0].returncode != 0 and "crash_after_step: SIGKILL rank 0 after step 10" in crashed[0].stderr
    assert max(e["step"] for e in events(run_dir, "train")) == 10
    resumed = _two_nodes(args, rec2, [run_dir, cache])
    for p in resumed:
        assert p.returncode == 0, p.stderr[-4000:]
    assert f"resumed from {run_dir}/iter_0000008 at iteration 8" in resumed[0].stdout
    assert " iteration " in resumed[0].stdout and " iteration " not in resumed[1].stdout  # only global rank 0 logs

    # exactly the one-node run: every loss, mixture, evaluation and Aioli round
    assert strip_timing(read_metrics(run_dir)) == strip_timing(read_metrics(ref_dir))
    assert len(events(run_dir, "aioli_round")) == 2

    # only global rank 0 wrote megamix's files: metrics, checkpoint state, latest, schedule, the data cache
    w0 = {r["path"] for rec in (rec1, rec2) for r in _jsonl(os.path.join(rec, "writes_rank0.jsonl"))}
    w1 = {r["path"] for rec in (rec1, rec2) for r in _jsonl(os.path.join(rec, "writes_rank1.jsonl"))}
    real = os.path.realpath
    assert real(os.path.join(run_dir, "metrics.jsonl")) in w0
    assert real(os.path.join(run_dir, "latest")) in w0
    assert real(os.path.join(run_dir, "iter_0000016", "megamix_state.json")) in w0
    assert any(p.startswith(real(cache)) and p.endswith(".npy") for p in w0)
    assert w1 == set(), sorted(w1)

    # both ranks computed the same mixture for every phase (rank 1 may have begun one more phase before the kill)
    c0, c1 = (_jsonl(os.path.join(rec1, f"weights_rank{r}.jsonl")) for r in (0, 1))
    assert len(c0) >= 5 and c1[:len(c0)] == c0
    m0, m1 = (_jsonl(os.path.join(rec2, f"weights_rank{r}.jsonl")) for r in (0, 1))
    assert len(m0) >= 3 and m0 == m1
    assert len({tuple(m["weights"]) for m in c0 + m0}) >= 4  # probes and re-weighted rounds
