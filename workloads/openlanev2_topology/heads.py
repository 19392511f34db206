"""The baseline's heads: a 1-encoder/1-decoder DETR head (lanes on the BEV, traffic elements
on the front view) and the pairwise MLP topology head.

The transformer follows mmdet's DETR `Transformer` as the baseline configures it: post-norm
layers (attention -> add -> LayerNorm, FFN -> add -> LayerNorm), sine positional encoding
(num_feats = embed/2, normalised), learned query positions with zero-initialised targets, a
final decoder LayerNorm, dropout 0.1 in attention and FFN. The regression branch is
reg_ffn (2 linear layers, no residual) -> ReLU -> fc_reg -> sigmoid; the classification bias
starts at the prior 0.01 as mmdet's DETRHead.init_weights does for sigmoid losses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sine_position_encoding(mask: torch.Tensor, num_feats: int, temperature: float = 10000.0
                           ) -> torch.Tensor:
    """mmdet's SinePositionalEncoding(normalize=True): (B, H, W) padding mask -> (B, 2F, H, W)."""
    not_mask = (~mask).to(torch.float32)
    y_embed = not_mask.cumsum(1)
    x_embed = not_mask.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * scale
    x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class FFN(nn.Module):
    def __init__(self, dims: int, hidden: int, dropout: float, residual: bool = True) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dims, hidden), nn.Linear(hidden, dims)
        self.drop = nn.Dropout(dropout)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.fc2(F.relu(self.fc1(x))))
        return x + out if self.residual else out


class EncoderLayer(nn.Module):
    def __init__(self, dims: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dims, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dims), nn.LayerNorm(dims)
        self.ffn = FFN(dims, ffn, dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor | None
                ) -> torch.Tensor:
        q = x + pos
        x = self.norm1(x + self.drop(self.attn(q, q, x, key_padding_mask=pad)[0]))
        return self.norm2(self.ffn(x))


class DecoderLayer(nn.Module):
    def __init__(self, dims: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dims, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dims, heads, dropout=dropout, batch_first=True)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dims) for _ in range(3))
        self.ffn = FFN(dims, ffn, dropout)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                pos: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.drop1(self.self_attn(q, q, tgt)[0]))
        attn = self.cross_attn(tgt + query_pos, memory + pos, memory, key_padding_mask=pad)[0]
        tgt = self.norm2(tgt + self.drop2(attn))
        return self.norm3(self.ffn(tgt))


class DETRHead(nn.Module):
    """CustomDETRHead: input_proj -> encoder -> decoder -> (cls logits, sigmoid reg, embeddings)."""

    def __init__(self, in_channels: int, num_classes: int, num_queries: int, reg_dims: int,
                 dims: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.input_proj = nn.Conv2d(in_channels, dims, 1)
        self.encoder = EncoderLayer(dims, heads, ffn, dropout)
        self.decoder = DecoderLayer(dims, heads, ffn, dropout)
        self.post_norm = nn.LayerNorm(dims)
        self.query_embedding = nn.Embedding(num_queries, dims)
        self.fc_cls = nn.Linear(dims, num_classes)
        self.reg_ffn = FFN(dims, dims, 0.0, residual=False)
        self.fc_reg = nn.Linear(dims, reg_dims)
        nn.init.constant_(self.fc_cls.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W); mask (B, H, W) True where padded. Returns cls, reg, embeddings."""
        b = x.shape[0]
        x = self.input_proj(x)
        if mask is None:
            mask = torch.zeros(b, *x.shape[-2:], dtype=torch.bool, device=x.device)
        pos = sine_position_encoding(mask, x.shape[1] // 2).to(x.dtype)
        memory = x.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        pad = mask.flatten(1) if bool(mask.any()) else None
        memory = self.encoder(memory, pos, pad)
        query_pos = self.query_embedding.weight.unsqueeze(0).expand(b, -1, -1)
        tgt = torch.zeros_like(query_pos)
        embed = self.post_norm(self.decoder(tgt, query_pos, memory, pos, pad))
        reg = self.fc_reg(F.relu(self.reg_ffn(embed))).sigmoid()
        return self.fc_cls(embed), reg, embed


class TopologyHead(nn.Module):
    """MLP over every (row, column) pair of decoder embeddings; returns logits (B, R, C).

    The original applies the sigmoid inside forward; here the logits are returned and the
    caller applies it, so the loss can use either form (config.topology_loss).
    """

    def __init__(self, in_channels: int, hidden: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_channels] + [hidden] * (num_layers - 1) + [1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        r, c = rows.shape[1], cols.shape[1]
        x = torch.cat([rows.unsqueeze(2).expand(-1, -1, c, -1),
                       cols.unsqueeze(1).expand(-1, r, -1, -1)], dim=-1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x.squeeze(-1)
