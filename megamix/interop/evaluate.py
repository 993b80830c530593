"""Per-domain loss of any causal LM (e.g. a converted ``transformers`` model) on a megamix run's data.

Uses exactly the samples of the run's own reports (the first N samples of epoch 0 of each
domain's valid or test split), so a converted model's numbers compare with
``test_results.json`` and the 'eval' events.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from megamix.data.config import DataConfig, DomainSpec
from megamix.data.domain import build_domain_datasets


def run_config(run_dir: str) -> dict:
    """The resolved config a run wrote to ``<run_dir>/config.json``."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (is {run_dir} a megamix --save directory?)")
    with open(path) as f:
        return json.load(f)


def data_config_of_run(config: dict) -> DataConfig:
    """The DataConfig recorded in a run's config."""
    data = dict(config["data"])
    data["data_path"] = [DomainSpec(**spec) for spec in data["data_path"]]
    data["split"] = tuple(data["split"])
    return DataConfig(**data)


def _default_samples(config: dict, split: str) -> int:
    if split == "test":
        return config["training"].get("test_samples_per_domain") or 4096
    return config["data"]["eval_samples_per_domain"]


@torch.no_grad()
def domain_losses(model, run_dir: str, split: str = "test", num_samples: int | None = None,
                  batch_size: int = 8) -> dict[str, float]:
    """Mean token loss per domain of ``model`` (a megamix GPT or an HF causal LM) on the run's report samples."""
    config = run_config(run_dir)
    n = num_samples or _default_samples(config, split)
    model.eval()
    out = {}
    for ds in build_domain_datasets(data_config_of_run(config), split):
        total, count = 0.0, 0
        ks = np.arange(min(n, len(ds)))
        for start in range(0, len(ks), batch_size):
            batch = ds.get_batch(ks[start:start + batch_size])
            tokens, labels = torch.from_numpy(batch["tokens"]), torch.from_numpy(batch["labels"])
            logits = model(tokens)
            logits = getattr(logits, "logits", logits)
            total += float(F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="sum"))
            count += labels.numel()
        out[ds.name] = total / max(count, 1)
    return out
