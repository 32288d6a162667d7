"""GPT-2 in nanoGPT's layout (karpathy/nanoGPT model.py), written out again here.

GPT2-124M: 12 layers, 12 heads, 768 wide, vocabulary 50304 (50257 padded to a
multiple of 64), context 1024, no biases anywhere (linear layers and
LayerNorms), token embedding tied to the output layer. Used for the Wikitext
(Figure 4, 14; dropout 0.2, context 512) and OpenWebText (Figures 3, 5, 13;
dropout 0) runs.

    x = drop(wte[tokens] + wpe[positions])
    for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    logits = lm_head(ln_f(x))            lm_head.weight is wte.weight

Every nn.Linear is a norms.Linear, so weight_standardization=True gives the
Weight Standardized GPT2 of Figure 3 (lm_head included; the embedding lookup
uses the raw wte) and gain=True the "slinear" per-neuron gains the paper adds
for RV training of transformers.

Init as nanoGPT: every weight N(0, 0.02); the two residual output projections
(attn.c_proj, mlp.c_proj) N(0, 0.02/sqrt(2·n_layer)) (GPT-2 paper), so the
residual stream does not grow with depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rotsweep.errors import UserError
from rotsweep.models import norms


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    weight_standardization: bool = False
    gain: bool = False


def linear(cfg: GPTConfig, n_in: int, n_out: int) -> norms.Linear:
    return norms.Linear(n_in, n_out, bias=False, standardize=cfg.weight_standardization, gain=cfg.gain)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = linear(cfg, cfg.n_embd, 3 * cfg.n_embd)  # query, key, value for all heads at once
        self.c_proj = linear(cfg, cfg.n_embd, cfg.n_embd)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, C / heads)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = linear(cfg, cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = linear(cfg, 4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=False),
        ))
        self.lm_head = linear(cfg, cfg.n_embd, cfg.vocab_size)
        # Weight tying: one tensor, listed once by model.parameters().
        self.transformer.wte.weight = self.lm_head.weight

        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))
            elif param.dim() >= 2:  # linear and embedding weights; LayerNorm weights and gains stay 1
                nn.init.normal_(param, 0.0, 0.02)
        norms.keep_init_scale(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, T) int64 tokens -> (N, T, vocab) logits; the caller computes the loss."""
        T = tokens.shape[1]
        if T > self.cfg.block_size:
            raise UserError(f"gpt2: sequence of {T} tokens is longer than block_size {self.cfg.block_size}")
        positions = torch.arange(T, device=tokens.device)
        x = self.transformer.drop(self.transformer.wte(tokens) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def gpt2(*, vocab_size: int | None = None, block_size: int | None = None, tiny: bool = False,
         dropout: float = 0.0, **weight_options) -> GPT:
    """GPT2-124M, or with tiny=True 2 layers × 2 heads × 64 wide (vocabulary 256, context 64 unless given)."""
    shape = dict(n_layer=2, n_head=2, n_embd=64) if tiny else dict(n_layer=12, n_head=12, n_embd=768)
    return GPT(GPTConfig(
        block_size=block_size or (64 if tiny else 1024),
        vocab_size=vocab_size or (256 if tiny else 50304),
        dropout=dropout, **shape, **weight_options,
    ))
