"""A decoder-only GPT in the Megatron-LM mould: pre-norm blocks, RoPE, SwiGLU, tied embeddings.

GPT-2 options (learned positions, GELU, LayerNorm, untied output) are config switches.
With labels the model returns per-token float32 losses; the trainer reduces them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megamix.model.fused import NORM_CHOICES, NORM_KINDS, make_norm
from megamix.model.rope import RotaryEmbedding

POSITION_TYPES = ("rope", "learned_absolute")
ACTIVATIONS = ("swiglu", "gelu")
RECOMPUTE_GRANULARITIES = ("selective", "full")
RECOMPUTE_METHODS = ("uniform", "block")


def default_ffn_hidden_size(hidden_size: int, activation: str) -> int:
    """Megatron/LLaMA default: SwiGLU int(8h/3) rounded up to a multiple of 64; GELU 4h."""
    if activation == "gelu":
        return 4 * hidden_size
    return -(-int(8 * hidden_size / 3) // 64) * 64


@dataclass
class GPTConfig:
    """Shape and options of the GPT."""

    vocab_size: int
    """Vocabulary size, already padded (--make-vocab-size-divisible-by)."""
    num_layers: int
    """Number of transformer blocks (--num-layers)."""
    hidden_size: int
    """Model width (--hidden-size)."""
    num_attention_heads: int
    """Attention heads; must divide the hidden size (--num-attention-heads)."""
    seq_length: int
    """Maximum number of positions (--seq-length / --max-position-embeddings)."""
    ffn_hidden_size: int | None = None
    """MLP inner width; default SwiGLU int(8h/3) rounded up to 64, GELU 4h (--ffn-hidden-size)."""
    position_embedding_type: str = "rope"
    """rope | learned_absolute (--position-embedding-type)."""
    activation: str = "swiglu"
    """swiglu | gelu (--swiglu / --gelu)."""
    normalization: str = "RMSNorm"
    """RMSNorm | LayerNorm (--normalization)."""
    untie_embeddings_and_output_weights: bool = False
    """Give the output layer its own weight instead of the word embedding's."""
    init_method_std: float = 0.02
    """Std of the normal initialisation of weights (--init-method-std)."""
    rotary_base: int = 10000
    """RoPE base period (--rotary-base)."""
    norm_epsilon: float = 1e-5
    """Epsilon of the norms (--norm-epsilon)."""
    hidden_dropout: float = 0.0
    """Dropout on embeddings and on attention/MLP outputs (--hidden-dropout)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (--attention-dropout)."""
    add_bias_linear: bool = False
    """Biases in the linear layers (--add-bias-linear)."""
    fused_kernels: str = "auto"
    """Norm implementation: auto | apex | none (--fused-kernels)."""
    recompute_granularity: str | None = None
    """Activation recompute: None, selective (attention core; --recompute-activations) or full."""
    recompute_method: str | None = None
    """For full recompute: uniform (chunks of N layers) or block (the first N layers) (--recompute-method)."""
    recompute_num_layers: int | None = None
    """Layers per recomputed chunk (uniform) or recomputed layers (block) (--recompute-num-layers)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_layers", "hidden_size", "num_attention_heads", "seq_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"--hidden-size {self.hidden_size} must be divisible by "
                             f"--num-attention-heads {self.num_attention_heads}")
        self._check_choices()
        self._check_numbers()
        self._check_recompute()
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = default_ffn_hidden_size(self.hidden_size, self.activation)

    def _check_choices(self) -> None:
        choices = {"position_embedding_type": POSITION_TYPES, "activation": ACTIVATIONS,
                   "normalization": NORM_KINDS, "fused_kernels": NORM_CHOICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                flag = "--swiglu/--gelu" if name == "activation" else f"--{name.replace('_', '-')}"
                raise ValueError(f"{flag}: expected one of {'|'.join(allowed)}, got {getattr(self, name)!r}")
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ValueError(f"--position-embedding-type rope needs an even head dimension; --hidden-size "
                             f"{self.hidden_size} / --num-attention-heads {self.num_attention_heads} = {self.head_dim}")

    def _check_numbers(self) -> None:
        if self.ffn_hidden_size is not None and (not isinstance(self.ffn_hidden_size, int) or self.ffn_hidden_size < 1):
            raise ValueError(f"--ffn-hidden-size: expected a positive integer, got {self.ffn_hidden_size!r}")
        for name in ("init_method_std", "norm_epsilon", "rotary_base"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected > 0, got {getattr(self, name)!r}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name.replace('_', '-')}: expected a probability in [0, 1), "
                                 f"got {getattr(self, name)!r}")

    def _check_recompute(self) -> None:
        g, m, n = self.recompute_granularity, self.recompute_method, self.recompute_num_layers
        if g not in (None, *RECOMPUTE_GRANULARITIES):
            raise ValueError(f"--recompute-granularity: expected one of {'|'.join(RECOMPUTE_GRANULARITIES)}, got {g!r}")
        if g != "full" and (m is not None or n is not None):
            raise ValueError("--recompute-method / --recompute-num-layers need --recompute-granularity full")
        if g == "full":
            if m not in RECOMPUTE_METHODS:
                raise ValueError(f"--recompute-granularity full needs --recompute-method "
                                 f"{'|'.join(RECOMPUTE_METHODS)}, got {m!r}")
            if n is None:
                self.recompute_num_layers = n = 1
            if not isinstance(n, int) or not 1 <= n <= self.num_layers:
                raise ValueError(f"--recompute-num-layers: expected 1..--num-layers ({self.num_layers}), got {n!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def flops_per_token(self, seq_length: int | None = None) -> float:
        """Training FLOPs per token (forward + backward, no recompute): 6 N + 12 L H S (PaLM's estimate).

        N counts the non-embedding parameters (linear weights and biases, norms) plus the output
        projection (vocab x hidden, tied or not), from the shape alone (so it holds for a model
        partitioned by ZeRO-3); 12 L H S is attention scores and weighted values over
        ``seq_length`` positions (default the config's). Equals :meth:`GPT.flops_per_token`.
        """
        h, f, layers = self.hidden_size, self.ffn_hidden_size, self.num_layers
        width = 2 * f if self.activation == "swiglu" else f
        norm = h if self.normalization == "RMSNorm" else 2 * h
        layer = 4 * h * h + h * width + f * h + 2 * norm + ((5 * h + width) if self.add_bias_linear else 0)
        n = layers * layer + norm + self.vocab_size * h
        s = self.seq_length if seq_length is None else seq_length
        return 6.0 * n + 12.0 * layers * h * s


def _recomputing(module: nn.Module) -> bool:
    """Recompute only pays in training, when a backward pass will follow."""
    return module.training and torch.is_grad_enabled()


def _numel(p: torch.Tensor) -> int:
    """Elements of a parameter, also when ZeRO-3 holds only a partition of it (``ds_numel``)."""
    return int(getattr(p, "ds_numel", p.numel()))


def _run_chunk(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through scaled_dot_product_attention."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads, self.head_dim, self.dropout = cfg.num_attention_heads, cfg.head_dim, cfg.attention_dropout
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.add_bias_linear)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.add_bias_linear)
        self.rotary = (RotaryEmbedding(cfg.head_dim, cfg.seq_length, cfg.rotary_base)
                       if cfg.position_embedding_type == "rope" else None)
        self.recompute_core = cfg.recompute_granularity == "selective"

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                              is_causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, H] -> [B, S, H]."""
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        if self.recompute_core and _recomputing(self):
            y = checkpoint(self._core, q, k, v, use_reentrant=False)
        else:
            y = self._core(q, k, v)
        return self.dense(y.transpose(1, 2).reshape(b, s, h))


class MLP(nn.Module):
    """SwiGLU (silu(x W_gate) * x W_up) or GELU feed-forward block."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.swiglu = cfg.activation == "swiglu"
        width = 2 * cfg.ffn_hidden_size if self.swiglu else cfg.ffn_hidden_size
        self.fc1 = nn.Linear(cfg.hidden_size, width, bias=cfg.add_bias_linear)
        self.fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=cfg.add_bias_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, H] -> [B, S, H]."""
        x = self.fc1(x)
        if self.swiglu:
            gate, up = x.chunk(2, dim=-1)
            x = F.silu(gate) * up
        else:
            x = F.gelu(x)
        return self.fc2(x)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg.normalization, cfg.hidden_size, cfg.norm_epsilon, cfg.fused_kernels)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg.normalization, cfg.hidden_size, cfg.norm_epsilon, cfg.fused_kernels)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, H] -> [B, S, H]."""
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    """Decoder-only language model; per-token losses with labels, logits without."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = (nn.Embedding(cfg.seq_length, cfg.hidden_size)
                                    if cfg.position_embedding_type == "learned_absolute" else None)
        self.embedding_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = make_norm(cfg.normalization, cfg.hidden_size, cfg.norm_epsilon, cfg.fused_kernels)
        self.output_layer = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.init_weights()
        if not cfg.untie_embeddings_and_output_weights:
            self.output_layer.weight = self.word_embeddings.weight  # one Parameter, two users

    def init_weights(self) -> None:
        """Megatron init: N(0, std) weights, output projections std/sqrt(2L), zero biases, unit norms."""
        std = self.config.init_method_std
        scaled = std / math.sqrt(2.0 * self.config.num_layers)
        seen = set()  # a tied output layer shares the embedding's weight: initialise it once
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and id(module.weight) not in seen:
                seen.add(id(module.weight))
                is_output_proj = name.endswith(("attn.dense", "mlp.fc2"))
                nn.init.normal_(module.weight, mean=0.0, std=scaled if is_output_proj else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, S, V] without labels; with labels, float32 per-token losses [B, S].

        Label -100 marks a position to ignore (its loss is 0).
        """
        b, s = tokens.shape
        if s > self.config.seq_length:
            raise ValueError(f"input has {s} positions but the model was built with --seq-length "
                             f"{self.config.seq_length}")
        x = self.word_embeddings(tokens)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(torch.arange(s, device=tokens.device))
        x = self._run_layers(self.embedding_dropout(x))
        logits = self.output_layer(self.final_norm(x))
        if labels is None:
            return logits
        losses = F.cross_entropy(logits.float().view(b * s, -1), labels.reshape(b * s), reduction="none")
        return losses.view(b, s)

    def _run_layers(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks in order; with full recompute, Megatron's uniform or block checkpointing."""
        cfg = self.config
        if cfg.recompute_granularity != "full" or not _recomputing(self):
            for layer in self.layers:
                x = layer(x)
            return x
        n = cfg.recompute_num_layers
        if cfg.recompute_method == "uniform":  # inputs of chunks of n layers kept, chunks recomputed
            for start in range(0, len(self.layers), n):
                x = checkpoint(_run_chunk, self.layers[start:start + n], x, use_reentrant=False)
            return x
        for i, layer in enumerate(self.layers):  # block: the first n layers recomputed one by one
            x = checkpoint(layer, x, use_reentrant=False) if i < n else layer(x)
        return x

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (tied weights once); optionally without word/position/output embeddings."""
        total = sum(_numel(p) for p in self.parameters())
        if exclude_embeddings:
            embeddings = {id(p): p for m in (self.word_embeddings, self.position_embeddings, self.output_layer)
                          if m is not None for p in m.parameters()}
            total -= sum(_numel(p) for p in embeddings.values())
        return total

    def flops_per_token(self, seq_length: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 N_matmul + 12 L H S (PaLM's estimate).

        N_matmul counts the non-embedding parameters plus the output projection; the second
        term is attention scores and weighted values over ``seq_length`` (default the config's).
        """
        cfg = self.config
        s = cfg.seq_length if seq_length is None else seq_length
        n_matmul = self.num_parameters(exclude_embeddings=True) + cfg.vocab_size * cfg.hidden_size
        return 6.0 * n_matmul + 12.0 * cfg.num_layers * cfg.hidden_size * s
