"""megamix checkpoints <-> Hugging Face Llama directories (the library behind the converters and --load-hf).

Reading a checkpoint: at ZeRO 0 the module state is in ``mp_rank_00_model_states.pt``; at
ZeRO 1-3 the fp32 master weights are consolidated from the optimizer shards with
DeepSpeed's ``zero_to_fp32`` (on the CPU, without a process group), so a bf16 run exports
its fp32 weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable

import torch

from megamix.data.tokenizer import TokenizerConfig
from megamix.interop.hf import (HFMappingError, gpt_fields_from_llama, hf_to_megamix, llama_config_dict,
                                load_into_gpt, megamix_to_hf)
from megamix.model.gpt import GPT, GPTConfig
from megamix.training.checkpoint import LATEST_FILE, STATE_FILE, tag_for
from megamix.training.run_state import read_run_state

_FLAGS = {"vocab_size": "the vocabulary (tokenizer size padded by --make-vocab-size-divisible-by)",
          "num_layers": "--num-layers", "hidden_size": "--hidden-size",
          "num_attention_heads": "--num-attention-heads", "ffn_hidden_size": "--ffn-hidden-size",
          "norm_epsilon": "--norm-epsilon", "rotary_base": "--rotary-base",
          "untie_embeddings_and_output_weights": "--untie-embeddings-and-output-weights",
          "add_bias_linear": "--add-bias-linear"}


def checkpoint_tag(run_dir: str, iteration: int | None = None) -> str:
    """The checkpoint directory name of ``iteration`` in ``run_dir`` (default: the one ``latest`` names)."""
    if iteration is None:
        latest = os.path.join(run_dir, LATEST_FILE)
        if not os.path.isfile(latest):
            raise FileNotFoundError(f"{run_dir}: no megamix checkpoint (no '{LATEST_FILE}' file)")
        with open(latest) as f:
            tag = f.read().strip()
    else:
        tag = tag_for(iteration)
    if not os.path.isfile(os.path.join(run_dir, tag, STATE_FILE)):
        have = sorted(d for d in os.listdir(run_dir) if d.startswith("iter_")) if os.path.isdir(run_dir) else []
        raise FileNotFoundError(f"{run_dir}/{tag}: no complete checkpoint (no {STATE_FILE}); have {have}")
    return tag


def read_checkpoint(run_dir: str, iteration: int | None = None) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(fp32 model state dict, the run's resolved config, tag) of a checkpoint at any ZeRO stage."""
    tag = checkpoint_tag(run_dir, iteration)
    config = read_run_state(run_dir, tag).client["config"]  # every file verified, before unpickling any
    if config["training"]["zero_stage"] > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(run_dir, tag=tag)
    else:
        states = torch.load(os.path.join(run_dir, tag, "mp_rank_00_model_states.pt"), map_location="cpu",
                            weights_only=False)
        state = states["module"]
    return {k: v.float() for k, v in state.items()}, config, tag


def save_hf_model(state: dict[str, torch.Tensor], cfg: GPTConfig, out_dir: str,
                  bos_token_id: int | None = None, eos_token_id: int | None = None) -> None:
    """Write a megamix GPT state dict as a ``LlamaForCausalLM`` (config.json + model.safetensors) in ``out_dir``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_state = megamix_to_hf(state, cfg)
    if not cfg.untie_embeddings_and_output_weights:
        hf_state["lm_head.weight"] = hf_state["model.embed_tokens.weight"]
    config = LlamaConfig(**llama_config_dict(cfg, bos_token_id, eos_token_id))
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(hf_state, strict=True, assign=True)
    if not cfg.untie_embeddings_and_output_weights:
        model.tie_weights()
    model.save_pretrained(out_dir)


def _usual_permissions(directory: str) -> None:
    """mkdtemp and some writers create private files: give the export the umask's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o666 & ~umask)


def _replace_dir(tmp: str, out: str) -> None:
    """Move the finished ``tmp`` to ``out``, replacing an earlier export there only now."""
    _usual_permissions(tmp)
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(os.path.abspath(out)))
        os.replace(out, os.path.join(old, "x"))
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old)


def export_hf(run_dir: str, out: str, iteration: int | None = None,
              log: Callable[[str], object] = print) -> str:
    """Convert a megamix checkpoint to a Hugging Face Llama directory ``out`` (written whole or not at all)."""
    from megamix.interop.hf_tokenizer import save_hf_tokenizer

    state, config, tag = read_checkpoint(run_dir, iteration)
    cfg = GPTConfig(**{**config["model"], "fused_kernels": "none"})
    tok_cfg = TokenizerConfig(**config["tokenizer"])
    eos = None if tok_cfg.tokenizer_type == "NullTokenizer" else tok_cfg.build().eod
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.tmp-", dir=parent)
    try:
        save_hf_model(state, cfg, tmp, bos_token_id=eos, eos_token_id=eos)
        log(save_hf_tokenizer(tok_cfg, tmp))
        with open(os.path.join(tmp, "megamix_source.json"), "w") as f:
            json.dump({"run_dir": os.path.abspath(run_dir), "tag": tag, "config": config}, f, indent=1)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}: LlamaForCausalLM from {run_dir}/{tag}")
    return tag


def load_hf_state(hf_dir: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, the state dict) of a local HF model directory with safetensors weights."""
    from safetensors.torch import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"--load-hf {hf_dir}: no model.safetensors (or its index); only safetensors "
                                "weights load")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(os.path.join(hf_dir, name)))
    return config, state


def check_compatible(hf_config: dict, cfg: GPTConfig, source: str) -> None:
    """Raise naming the flag when the HF config's shape differs from the model the flags build."""
    for field, value in gpt_fields_from_llama(hf_config).items():
        ours = getattr(cfg, field)
        if ours != value and not (isinstance(value, float) and abs(ours - value) <= 1e-12 * abs(value)):
            raise HFMappingError(f"{source}: {_FLAGS[field]} is {ours!r} here but the HF model has {value!r}")


def init_from_hf(model: GPT, hf_dir: str) -> None:
    """Initialise ``model``'s weights (in place) from a Llama-architecture HF checkpoint directory."""
    source = f"--load-hf {hf_dir}"
    hf_config, state = load_hf_state(hf_dir)
    check_compatible(hf_config, model.config, source)
    load_into_gpt(model, hf_to_megamix({k: v.float() for k, v in state.items()}, model.config), source)
