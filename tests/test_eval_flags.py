"""--split-seed and --eval-micro-batch-size: parsed into their configs; evaluation does not depend on the batch."""

import numpy as np
import pytest
import torch

from data_fixtures import write_domains
from megamix.data.config import DataConfig
from megamix.data.domain import build_domain_datasets
from megamix.data.tokenizer import TokenizerConfig
from megamix.model.gpt import GPT, GPTConfig
from megamix.training.arguments import build_parser, config_from_args
from megamix.training.config import TrainingConfig
from megamix.training.evaluation import Evaluator

BASE = ["--data-path", "/d/a", "/d/b", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "16", "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", "10",
        "--lr", "1e-3", "--tokenizer-type", "NullTokenizer", "--vocab-size", "100"]


def _cfg(*extra):
    args = build_parser().parse_args(BASE + list(extra))
    return config_from_args(args, TokenizerConfig("NullTokenizer", None, 100))


def test_flags_reach_their_configs():
    cfg = _cfg("--seed", "5", "--split-seed", "9", "--eval-micro-batch-size", "32")
    assert (cfg.data.seed, cfg.data.split_seed) == (5, 9)
    assert cfg.training.eval_batch == 32 and cfg.training.micro_batch_size == 4
    default = _cfg("--seed", "5")
    assert default.data.split_seed is None and default.training.eval_batch == 4
    with pytest.raises(ValueError, match="--eval-micro-batch-size"):
        TrainingConfig(eval_micro_batch_size=0)


def test_evaluation_is_the_same_at_any_eval_batch(tmp_path):
    prefixes = write_domains(tmp_path, ["a", "b"])
    cfg = DataConfig(data_path=prefixes, split="60,40,0", seq_length=16, data_cache_path=str(tmp_path / "c"))
    valid = build_domain_datasets(cfg, "valid")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16))
    losses = [Evaluator(valid, 20, mbs, 0, 1, torch.device("cpu")).evaluate(model) for mbs in (2, 7, 64)]
    assert np.all(np.isfinite(losses[0])) and losses[0].shape == (2,)
    for other in losses[1:]:
        np.testing.assert_allclose(other, losses[0], rtol=1e-5)


def test_ranks_get_equal_shares_and_their_sums_equal_one_ranks_evaluation_bit_for_bit(tmp_path):
    prefixes = write_domains(tmp_path, ["a", "b", "c"])
    cfg = DataConfig(data_path=prefixes, split="60,40,0", seq_length=16, data_cache_path=str(tmp_path / "c"))
    valid = build_domain_datasets(cfg, "valid")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16))
    cpu = torch.device("cpu")
    whole = Evaluator(valid, 6, 4, 0, 1, cpu).local_stats(model).data  # 18 samples
    for world in (2, 3, 4):
        ranks = [Evaluator(valid, 6, 4, r, world, cpu) for r in range(world)]
        real = [int(sum(b["loss_mask"].amax(dim=1).sum() for b in e.batches)) for e in ranks]
        assert len({len(e.batches) for e in ranks}) == 1  # the same number of forward passes (ZeRO-3)
        assert sum(real) == 18 and max(real) - min(real) <= 1  # equal shares: 18 over 4 ranks is 5, 5, 4, 4
        assert torch.equal(sum(e.local_stats(model).data for e in ranks), whole)
