"""The mapping between megamix's GPT and Hugging Face ``transformers``' ``LlamaForCausalLM``.

megamix's default GPT (RoPE in the rotate-half layout, SwiGLU, RMSNorm, no biases, tied or
untied output) is a Llama: the mapping only renames and splits tensors.

* ``attn.qkv`` [3H, H] holds the rows of q, then k, then v (each head-major, as the forward
  views them ``(3, heads, head_dim)``): ``q_proj``, ``k_proj``, ``v_proj`` are its thirds.
* ``mlp.fc1`` [2F, H] holds the gate rows, then the up rows: ``gate_proj``, ``up_proj``.
* RoPE: both rotate (x1, x2) halves with the same inverse frequencies, so q/k need no
  permutation (checked numerically in tests).
* ``--add-bias-linear`` maps to Llama's ``attention_bias`` and ``mlp_bias``.

Variants without a faithful Llama counterpart (learned positions, GELU, LayerNorm) are
refused, naming the flag. The vocabulary is megamix's padded size (--make-vocab-size-divisible-by):
rows past the tokenizer's vocabulary are never produced by it.
"""

from __future__ import annotations

import torch

from megamix.model.gpt import GPTConfig

_REFUSED = (
    ("position_embedding_type", "rope", "--position-embedding-type learned_absolute"),
    ("activation", "swiglu", "--gelu"),
    ("normalization", "RMSNorm", "--normalization LayerNorm"),
)


class HFMappingError(ValueError):
    """A model or checkpoint that cannot be mapped between megamix and Hugging Face Llama."""


def check_exportable(cfg: GPTConfig) -> None:
    """Raise HFMappingError naming the flag when ``cfg`` has no faithful Llama counterpart."""
    for field, wanted, flag in _REFUSED:
        if getattr(cfg, field) != wanted:
            raise HFMappingError(f"the model was trained with {flag}, which Hugging Face's LlamaForCausalLM cannot "
                                 f"represent; only the default shape (RoPE, --swiglu, --normalization RMSNorm) "
                                 f"converts")


def llama_config_dict(cfg: GPTConfig, bos_token_id: int | None = None, eos_token_id: int | None = None) -> dict:
    """The ``LlamaConfig`` keyword arguments equivalent to ``cfg``."""
    check_exportable(cfg)
    return {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_attention_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_length, "rms_norm_eps": cfg.norm_epsilon,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
        "tie_word_embeddings": not cfg.untie_embeddings_and_output_weights,
        "attention_bias": cfg.add_bias_linear, "mlp_bias": cfg.add_bias_linear,
        "attention_dropout": cfg.attention_dropout, "initializer_range": cfg.init_method_std,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": None,
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
    }


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise HFMappingError(f"the HF model uses RoPE scaling {params or hf.get('rope_scaling')}; megamix's RoPE "
                             "has no scaling (only rope_type 'default' loads)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def gpt_fields_from_llama(hf: dict) -> dict:
    """GPTConfig fields implied by a Llama ``config.json`` (raises on what megamix cannot represent)."""
    if hf.get("model_type") != "llama":
        raise HFMappingError(f"config.json has model_type {hf.get('model_type')!r}; only 'llama' loads")
    if hf.get("hidden_act", "silu") != "silu":
        raise HFMappingError(f"config.json has hidden_act {hf['hidden_act']!r}; megamix's SwiGLU needs 'silu'")
    heads = hf["num_attention_heads"]
    if hf.get("num_key_value_heads", heads) != heads:
        raise HFMappingError(f"config.json has num_key_value_heads {hf['num_key_value_heads']} != "
                             f"num_attention_heads {heads} (grouped-query attention); megamix has full multi-head only")
    if hf.get("head_dim", hf["hidden_size"] // heads) * heads != hf["hidden_size"]:
        raise HFMappingError(f"config.json has head_dim {hf['head_dim']} * {heads} heads != hidden_size "
                             f"{hf['hidden_size']}; megamix needs head_dim = hidden_size / heads")
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
        raise HFMappingError("config.json has attention_bias != mlp_bias; megamix's --add-bias-linear sets both")
    return {
        "vocab_size": hf["vocab_size"], "num_layers": hf["num_hidden_layers"], "hidden_size": hf["hidden_size"],
        "num_attention_heads": heads, "ffn_hidden_size": hf["intermediate_size"],
        "norm_epsilon": hf["rms_norm_eps"], "rotary_base": _rope_theta(hf),
        "untie_embeddings_and_output_weights": not hf.get("tie_word_embeddings", True),
        "add_bias_linear": bool(hf.get("attention_bias", False)),
    }


def _layer_pairs(i: int) -> list[tuple[str, str]]:
    """(megamix, HF) names of the tensors of layer i that map one to one."""
    m, h = f"layers.{i}.", f"model.layers.{i}."
    return [(m + "norm1.weight", h + "input_layernorm.weight"),
            (m + "norm2.weight", h + "post_attention_layernorm.weight"),
            (m + "attn.dense.weight", h + "self_attn.o_proj.weight"),
            (m + "attn.dense.bias", h + "self_attn.o_proj.bias"),
            (m + "mlp.fc2.weight", h + "mlp.down_proj.weight"),
            (m + "mlp.fc2.bias", h + "mlp.down_proj.bias")]


def _fused_parts(i: int) -> list[tuple[str, list[str]]]:
    """(megamix fused tensor, its HF parts in row order) of layer i, weights and biases."""
    m, h = f"layers.{i}.", f"model.layers.{i}."
    out = []
    for kind in ("weight", "bias"):
        out.append((f"{m}attn.qkv.{kind}", [f"{h}self_attn.{p}_proj.{kind}" for p in "qkv"]))
        out.append((f"{m}mlp.fc1.{kind}", [f"{h}mlp.gate_proj.{kind}", f"{h}mlp.up_proj.{kind}"]))
    return out


def _global_pairs(cfg: GPTConfig) -> list[tuple[str, str]]:
    pairs = [("word_embeddings.weight", "model.embed_tokens.weight"), ("final_norm.weight", "model.norm.weight")]
    if cfg.untie_embeddings_and_output_weights:
        pairs.append(("output_layer.weight", "lm_head.weight"))
    return pairs


def megamix_to_hf(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """A megamix GPT state dict -> the ``LlamaForCausalLM`` state dict (contiguous fp32 copies)."""
    check_exportable(cfg)
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_layers):
        for ours, theirs in _layer_pairs(i):
            if ours in state:
                out[theirs] = state[ours]
        for ours, parts in _fused_parts(i):
            if ours in state:
                out.update(zip(parts, state[ours].chunk(len(parts), dim=0)))
    for ours, theirs in _global_pairs(cfg):
        out[theirs] = state[ours]
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def hf_to_megamix(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """A ``LlamaForCausalLM`` state dict -> a megamix GPT state dict (the inverse of :func:`megamix_to_hf`)."""
    check_exportable(cfg)
    out: dict[str, torch.Tensor] = {}
    used = {"lm_head.weight"} if not cfg.untie_embeddings_and_output_weights else set()
    for i in range(cfg.num_layers):
        for ours, theirs in _layer_pairs(i):
            if theirs in state:
                out[ours] = state[theirs]
                used.add(theirs)
        for ours, parts in _fused_parts(i):
            if all(p in state for p in parts):
                out[ours] = torch.cat([state[p] for p in parts], dim=0)
                used.update(parts)
    for ours, theirs in _global_pairs(cfg):
        if theirs in state:
            out[ours] = state[theirs]
            used.add(theirs)
    unused = sorted(set(state) - used)
    if unused:
        raise HFMappingError(f"the HF checkpoint has tensors megamix's GPT has no place for: {unused[:6]} "
                             f"(check --num-layers {cfg.num_layers} and --untie-embeddings-and-output-weights)")
    if not cfg.untie_embeddings_and_output_weights and "word_embeddings.weight" in out:
        out["output_layer.weight"] = out["word_embeddings.weight"]
    return out


def load_into_gpt(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a megamix state dict into ``model``; a missing, extra or mis-shaped tensor is an error naming it."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise HFMappingError(f"{source}: tensors do not match the model (missing {missing[:6]}, "
                             f"unexpected {unexpected[:6]})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise HFMappingError(f"{source}: tensor {name} has shape {tuple(tensor.shape)} but the model built "
                                 f"from the flags has {tuple(own[name].shape)}")
    with torch.no_grad():
        for name, param in model.state_dict(keep_vars=True).items():
            param.copy_(state[name].to(param.dtype))
