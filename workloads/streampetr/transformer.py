"""PETRTemporalTransformer: decoder layers (self-attn over current queries + memory, norm,
cross-attn over image tokens, norm, FFN, norm), post-norm on every intermediate output.

Attention goes through `scaled_dot_product_attention` (the original uses flash-attn for the
cross-attention, which is CUDA/fp16-only). As in the original, the cross-attention has no
attention-probability dropout (its FlashMHA call passes the dropout as `bias`); the
self-attention has dropout on the probabilities and on the residual.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    def __init__(self, dims: int, heads: int, attn_drop: float) -> None:
        super().__init__()
        self.heads, self.attn_drop = heads, attn_drop
        self.q, self.k, self.v = (nn.Linear(dims, dims) for _ in range(3))
        self.out = nn.Linear(dims, dims)
        for m in (self.q, self.k, self.v, self.out):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor | None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """blocked: bool, True = may not attend (the original's convention); bias: float,
        added to the logits (the smoke's ray-distance prior)."""
        b, nq, c = q.shape
        h = self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, h, c // h).transpose(1, 2)

        mask = None if blocked is None else ~blocked
        if bias is not None:  # both given: the bias where attending is allowed, -inf elsewhere
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(split(self.q(q)), split(self.k(k)), split(self.v(v)),
                                             attn_mask=mask,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.out(out.transpose(1, 2).reshape(b, nq, c))


class DecoderLayer(nn.Module):
    def __init__(self, dims: int, heads: int, ffn_dims: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dims, heads, dropout)
        self.cross_attn = Attention(dims, heads, 0.0)
        self.ffn = nn.Sequential(nn.Linear(dims, ffn_dims), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dims, dims))
        self.norms = nn.ModuleList(nn.LayerNorm(dims) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                pos_embed: torch.Tensor, temp_memory: torch.Tensor, temp_pos: torch.Tensor,
                attn_mask: torch.Tensor | None, cross_bias: torch.Tensor | None = None) -> torch.Tensor:
        keys = torch.cat([query, temp_memory], 1)
        key_pos = torch.cat([query_pos, temp_pos], 1)
        x = query + self.drop(self.self_attn(query + query_pos, keys + key_pos, keys, attn_mask))
        x = self.norms[0](x)
        x = x + self.drop(self.cross_attn(x + query_pos, memory + pos_embed, memory, None, cross_bias))
        x = self.norms[1](x)
        x = x + self.drop(self.ffn(x))
        return self.norms[2](x)


class TemporalDecoder(nn.Module):
    def __init__(self, num_layers: int, dims: int, heads: int, ffn_dims: int, dropout: float,
                 with_cp: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dims, heads, ffn_dims, dropout) for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(dims)
        self.with_cp = with_cp

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                pos_embed: torch.Tensor, temp_memory: torch.Tensor, temp_pos: torch.Tensor,
                attn_mask: torch.Tensor | None, cross_bias: torch.Tensor | None = None) -> torch.Tensor:
        """(num_layers, B, Q, C): every layer's output through the shared post-norm."""
        outs = []
        for layer in self.layers:
            args = (query, query_pos, memory, pos_embed, temp_memory, temp_pos, attn_mask, cross_bias)
            if self.with_cp and self.training:
                query = checkpoint(layer, *args, use_reentrant=False)
            else:
                query = layer(*args)
            outs.append(self.post_norm(query))
        return torch.stack(outs)
