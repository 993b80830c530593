"""The step loader: vectorised multi-document reads, prefetching that never changes what is read, MFU figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_fixtures import write_domains
from megamix.data.blend import BlendedDataset
from megamix.data.domain import DomainDataset
from megamix.data.sampler import micro_batch_indices
from megamix.data.schedule import MixtureSchedule
from megamix.model.gpt import GPT, GPTConfig
from megamix.training.loader import StepLoader
from megamix.training.throughput import Throughput, lookup_peak_tflops, peak_tflops, progress_fields

NAMES = ["a", "b", "c"]


def _datasets(tmp_path, seq: int, mean_len: int) -> list[DomainDataset]:
    prefixes = write_domains(tmp_path, NAMES, num_docs=60, mean_len=mean_len, vocab_size=500)
    return [DomainDataset(p, n, i, "train", seq, (0.9, 0.05, 0.05), 3, str(tmp_path / "cache"))
            for i, (p, n) in enumerate(zip(prefixes, NAMES))]


@pytest.mark.parametrize("mean_len", [3, 20, 200])
def test_vectorised_reads_match_the_per_sample_reader(tmp_path, mean_len):
    ds = _datasets(tmp_path, 32, mean_len)[0]
    n = len(ds)
    ks = np.array([0, 1, n - 1, n, n + 5, 3 * n + 2, 2, 7 % n, 2 * n - 1])
    batch = ds.get_batch(ks)
    expected = np.stack([ds.window(int(k)).astype(np.int64) for k in ks])  # the per-sample reader
    np.testing.assert_array_equal(batch["tokens"], expected[:, :-1])
    np.testing.assert_array_equal(batch["labels"], expected[:, 1:])
    assert set(batch) == {"tokens", "labels", "domain_id"}  # no all-ones loss mask
    arrays = ds.epoch_arrays(0)
    spans = arrays[1][1:, 0] - arrays[1][:-1, 0]
    if mean_len <= 20:
        assert (spans > 0).mean() > 0.9, "most windows should span several documents"


def _blend(tmp_path, seq: int = 16, gbs: int = 8) -> BlendedDataset:
    schedule = MixtureSchedule(NAMES, gbs)
    schedule.append(3 * gbs, np.array([0.5, 0.3, 0.2]))
    return BlendedDataset(_datasets(tmp_path, seq, 10), schedule)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetching_reads_exactly_the_samplers_batches(tmp_path, depth):
    blend = _blend(tmp_path)
    gbs, mbs, rank, size = 8, 2, 1, 2
    loader = StepLoader(blend, gbs, mbs, rank, size, torch.device("cpu"), depth)
    try:
        got = [loader.get(s) for s in range(3)]
        blend.schedule.append(2 * gbs, np.array([0.1, 0.1, 0.8]))  # the next phase's segment
        blend.sync()
        got += [loader.get(s) for s in range(3, 5)]
    finally:
        loader.close()
    for s, batch in enumerate(got):
        idx = micro_batch_indices(s, gbs, mbs, rank, size)
        assert len(batch.micro_batches) == len(idx) == 2
        for mb, ids in zip(batch.micro_batches, idx):
            ref = blend.get_batch(ids)
            np.testing.assert_array_equal(mb.tokens.numpy(), ref["tokens"])
            np.testing.assert_array_equal(mb.labels.numpy(), ref["labels"])
            np.testing.assert_array_equal(mb.domain_id.numpy(), ref["domain_id"])
        counts = np.bincount(blend.domain_ids(s * gbs, (s + 1) * gbs), minlength=3) * 16
        np.testing.assert_array_equal(batch.domain_tokens, counts)


def test_prefetch_stays_inside_the_synced_schedule(tmp_path):
    blend = _blend(tmp_path)
    loader = StepLoader(blend, 8, 2, 0, 1, torch.device("cpu"), 5)
    try:
        loader.get(0)
        assert sorted(loader._pending) == [1, 2]  # step 3 is not in the blend yet
        loader.get(2)  # a jump drops the stale step 1
        assert sorted(loader._pending) == []
    finally:
        loader.close()
    with pytest.raises(ValueError, match="--dataloader-prefetch"):
        StepLoader(blend, 8, 2, 0, 1, torch.device("cpu"), -1)


@pytest.mark.parametrize("kw", [{}, {"activation": "gelu", "normalization": "LayerNorm", "add_bias_linear": True,
                                    "untie_embeddings_and_output_weights": True}])
def test_flops_per_token_from_the_config_matches_the_model(kw):
    cfg = GPTConfig(vocab_size=512, num_layers=3, hidden_size=64, num_attention_heads=4, seq_length=128, **kw)
    model = GPT(cfg)
    assert cfg.flops_per_token() == model.flops_per_token()
    assert cfg.flops_per_token(64) == model.flops_per_token(64)
    n = model.num_parameters(exclude_embeddings=True) + 512 * 64
    assert cfg.flops_per_token(64) == 6 * n + 12 * 3 * 64 * 64


def test_mfu_figures():
    assert lookup_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert lookup_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert lookup_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert lookup_peak_tflops("NVIDIA L40S") == 362.0
    assert lookup_peak_tflops("Some CPU") is None
    assert peak_tflops(torch.device("cpu")) is None
    assert peak_tflops(torch.device("cpu"), 100.0) == 100.0
    with pytest.raises(ValueError, match="--peak-tflops"):
        peak_tflops(torch.device("cpu"), 0.0)
    t = Throughput(flops_per_token=1e9, world_size=4, peak_tflops=100.0)
    figures = t.measure(tokens_per_s=200_000.0)  # 2e14 FLOP/s over 4 devices = 50 TFLOP/s each
    assert figures == {"tflops_per_device": pytest.approx(50.0), "mfu": pytest.approx(0.5)}
    assert progress_fields(figures) == " | TFLOP/s/dev: 50.0 | MFU: 50.0%"
    assert Throughput(1e9, 1, None).measure(1000.0)["mfu"] is None
    assert "MFU" not in progress_fields(Throughput(1e9, 1, None).measure(1000.0))
