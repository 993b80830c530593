"""Data-pipeline speed: blending indices (C++ vs numpy), blended reads vs raw reads, the step loader, preprocessing.

Prints ratios; not a test. ``python benchmarks/bench_data.py [--skip-preprocess] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from megamix.data.blend import BlendedDataset  # noqa: E402
from megamix.data.domain import DomainDataset  # noqa: E402
from megamix.data.helpers import build_blending_indices, build_blending_indices_reference  # noqa: E402
from megamix.data.indexed import IndexedDataset, bin_path  # noqa: E402
from megamix.data.sampler import MegatronPretrainingSampler  # noqa: E402
from megamix.data.schedule import MixtureSchedule  # noqa: E402

ASSUMED_STEP_S = 0.5  # GPU seconds per optimizer step assumed for the phase-share figure
GPU_PEAK_TFLOPS, GPU_MFU = 989.0, 0.45  # an H100 SXM at the 45% MFU target: what one GPU's steps consume


def _best_time(fn, repeat: int = 3, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def bench_blending(quick: bool) -> None:
    """samples/s of the C++ blend vs the numpy reference, and one phase's cost as a share of training."""
    rng = np.random.default_rng(0)
    for k in (7, 1000):
        w = rng.random(k)
        n_cpp, n_ref = 102_400, (5_000 if quick else 20_000) // (10 if k == 1000 else 1)
        t_cpp = _best_time(lambda: build_blending_indices(w, n_cpp))
        t_ref = _best_time(lambda: build_blending_indices_reference(w, n_ref), repeat=1)
        cpp, ref = n_cpp / t_cpp, n_ref / t_ref
        print(f"build_blending_indices K={k:4d}: C++ {cpp:,.0f} samples/s, numpy reference {ref:,.0f} samples/s, "
              f"ratio {cpp / ref:,.0f}x")
    steps, gbs = 200, 512
    t = _best_time(lambda: build_blending_indices(rng.random(7), steps * gbs))
    phase_s = steps * ASSUMED_STEP_S
    print(f"one phase segment ({steps} steps x global batch {gbs} = {steps * gbs:,} samples, K=7): "
          f"{t * 1e3:.2f} ms = {100 * t / phase_s:.4f}% of the phase's training time "
          f"(assuming {steps} steps x {ASSUMED_STEP_S} s/step on a GPU; target <= 1%)")


def _write_big_domains(tmp: str, names: list[str], docs: int) -> list[str]:
    from data_fixtures import write_domain
    return [write_domain(tmp, n, num_docs=docs, mean_len=600, vocab_size=32000, seed=1) for n in names]


def bench_reads(quick: bool) -> None:
    """samples/s read through BlendedDataset + sampler vs raw windows straight from the IndexedDataset."""
    seq, micro, gbs, steps = 1024, 8, 64, (10 if quick else 40)
    names = [f"d{i}" for i in range(7)]
    with tempfile.TemporaryDirectory() as tmp:
        prefixes = _write_big_domains(tmp, names, 300 if quick else 1000)
        datasets = [DomainDataset(p, n, i, "train", seq, (0.98, 0.01, 0.01), 1, os.path.join(tmp, "cache"))
                    for i, (p, n) in enumerate(zip(prefixes, names))]
        schedule = MixtureSchedule(names, global_batch_size=gbs)
        schedule.append(steps * gbs, np.random.default_rng(0).random(7))
        blend = BlendedDataset(datasets, schedule)
        sampler = MegatronPretrainingSampler(0, micro, 0, 1, gbs, total_samples=len(blend))
        t_blend = _best_time(lambda: [blend.get_batch(np.asarray(mb)) for mb in sampler])
        n = len(blend)
        raw = [np.memmap(bin_path(p), dtype=IndexedDataset(p).dtype, mode="r") for p in prefixes]
        t_raw = _best_time(lambda: _raw_reads(raw, n, seq))
    print(f"reads at seq_length {seq}: BlendedDataset+sampler {n / t_blend:,.0f} samples/s, raw IndexedDataset "
          f"windows {n / t_raw:,.0f} samples/s, ratio {t_raw / t_blend:.2f} (1.0 = no overhead)")


def _gpu_samples_per_s(seq: int) -> float:
    """Samples/s one GPU's steps consume: a ~125M GPT (12 x 768, GPT-2 vocabulary) at GPU_MFU of GPU_PEAK_TFLOPS."""
    from megamix.model.gpt import GPTConfig

    cfg = GPTConfig(vocab_size=50304, num_layers=12, hidden_size=768, num_attention_heads=12, seq_length=seq)
    return GPU_PEAK_TFLOPS * 1e12 * GPU_MFU / cfg.flops_per_token(seq) / seq


def bench_loader(quick: bool) -> None:
    """Samples/s the step loader's worker assembles at seq 1024 (multi-document windows) vs what a GPU step consumes."""
    import torch

    from megamix.training.loader import StepLoader

    seq, micro, gbs, steps = 1024, 8, 64, (10 if quick else 40)
    names = [f"d{i}" for i in range(7)]
    with tempfile.TemporaryDirectory() as tmp:
        prefixes = _write_big_domains(tmp, names, 300 if quick else 1000)  # mean document 600 tokens < seq
        datasets = [DomainDataset(p, n, i, "train", seq, (0.98, 0.01, 0.01), 1, os.path.join(tmp, "cache"))
                    for i, (p, n) in enumerate(zip(prefixes, names))]
        schedule = MixtureSchedule(names, global_batch_size=gbs)
        schedule.append(steps * gbs, np.random.default_rng(0).random(7))
        blend = BlendedDataset(datasets, schedule)
        loader = StepLoader(blend, gbs, micro, 0, 1, torch.device("cpu"), depth=0)
        t_loader = _best_time(lambda: [loader.assemble(s) for s in range(steps)])
        cpu_loader = _best_time(lambda: [loader.assemble(s) for s in range(steps)], clock=time.process_time)
        ks = np.arange(200)
        t_sample = _best_time(lambda: [datasets[0].window(int(k)) for k in ks])  # the per-sample reader
    n = steps * gbs
    need = _gpu_samples_per_s(seq)
    print(f"step loader at seq_length {seq} (7 domains, mean document 600 tokens, one worker thread): "
          f"{n / t_loader:,.0f} samples/s wall, {n / cpu_loader:,.0f} samples per CPU-second "
          f"(per-sample reader: {len(ks) / t_sample:,.0f} samples/s wall)")
    print(f"one GPU's steps consume {need:,.0f} samples/s (~125M GPT, seq {seq}, {GPU_MFU:.0%} MFU of "
          f"{GPU_PEAK_TFLOPS:g} TFLOP/s): ratio {n / t_loader / need:.1f}x wall, {n / cpu_loader / need:.1f}x "
          f"per CPU-second (target >= 20x)")


def _raw_reads(raw: list[np.ndarray], n: int, seq: int) -> None:
    """Read n int64 (seq+1)-token windows straight from the token files, round robin, in file order."""
    out = np.empty((n, seq + 1), dtype=np.int64)
    cursors = [0] * len(raw)
    for i in range(n):
        d = i % len(raw)
        start = cursors[d]
        out[i] = raw[d][start:start + seq + 1]
        cursors[d] += seq
    return None


def bench_preprocess_ratio(mb: float) -> None:
    """Run benchmarks/bench_preprocess.py's bench_preprocess() when present and print its ratio."""
    try:
        from bench_preprocess import bench_preprocess
    except ImportError as exc:
        print(f"bench_preprocess: skipped ({exc})")
        return
    r = bench_preprocess(mb=mb)
    print(f"preprocess ({r['input_mb']:.1f} MB jsonl, {r['workers']} workers): ours {r['ours_text_mb_s']:.2f} MB/s, "
          f"raw SentencePiece {r['raw_text_mb_s']:.2f} MB/s, ratio {r['ratio']:.2f}")


def main() -> None:
    """Command-line entry: run every data benchmark and print its ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-preprocess", action="store_true", help="do not run bench_preprocess()")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args()
    bench_blending(args.quick)
    bench_reads(args.quick)
    bench_loader(args.quick)
    if not args.skip_preprocess:
        bench_preprocess_ratio(5.0 if args.quick else 100.0)


if __name__ == "__main__":
    main()
