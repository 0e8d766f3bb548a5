"""A small Vision Transformer with patch size, depth, width and heads as knobs.

Attention keeps ``qkv`` and ``proj`` as plain ``nn.Linear`` layers and derives the head dimension
from the current ``qkv`` width at run time, so a model whose heads or head dims were pruned runs
without patching attributes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViT width {dim} is not divisible by heads {num_heads}")
        self.num_heads = num_heads
        # fixed at build time: pruning head dims must not change the attention temperature
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, image_size=32, patch_size=4, depth=6, dim=128, heads=4, mlp_ratio=2.0,
                 num_classes=10, in_channels=3, pool="mean"):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"ViT pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        n_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():  # std scaled to the width: 0.02 suits ViT-B, not a 32-wide model
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=m.in_features ** -0.5)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        # mean pooling trains much faster than the class token on small data
        return self.head(x[:, 0] if self.pool == "cls" else x[:, 1:].mean(1))


@register("vit")
def vit(image_size: int = 32, patch_size: int = 4, depth: int = 6, dim: int = 128, heads: int = 4,
        mlp_ratio: float = 2.0, num_classes: int = 10, in_channels: int = 3, pool: str = "mean") -> nn.Module:
    return ViT(image_size, patch_size, depth, dim, heads, mlp_ratio, num_classes, in_channels, pool)
