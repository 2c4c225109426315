"""SAM's ViTDet-style image encoder (ViT-B/L/H): windowed and global attention with decomposed relative positions.

State-dict keys equal the official `image_encoder.*` keys. Parameter shapes stay those of the 1024 checkpoint at any
input size: the absolute position embedding is resized bicubically and the relative-position tables linearly at
forward time (methods.md §0.6), so official files load strictly whatever the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from promptsam.models.sam.common import MLPBlock, sam_neck


class ImageEncoderViT(nn.Module):
    """ViT image encoder: (B, 3, H, W) with H, W multiples of 16 -> (B, out_chans, H/16, W/16)."""

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                rel_pos_size=grid if i in global_attn_indexes else window_size,
            )
            for i in range(depth)
        )
        self.neck = sam_neck(embed_dim, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + resize_pos_embed(self.pos_embed, x.shape[1:3]).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, C, H, W) -> (B, H/p, W/p, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block with windowed (window_size > 0) or global attention."""

    def __init__(
        self, *, dim: int, num_heads: int, mlp_ratio: float, window_size: int, rel_pos_size: int
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, rel_pos_size=rel_pos_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1:3]
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, (height, width))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head attention with MViTv2 decomposed relative-position terms, computed by SDPA."""

    def __init__(self, dim: int, num_heads: int, *, rel_pos_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, h*w, head_dim)
        bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w))
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        x = x.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(x)


def rel_pos_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair of a 1D grid of `size`: (size, size, head_dim)."""
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.T[None], size=length, mode="linear")[0].T
    offsets = torch.arange(size, device=rel_pos.device)
    return rel_pos[offsets[:, None] - offsets[None, :] + size - 1]


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Additive attention bias q·R_h + q·R_w for queries (B, heads, h*w, d) -> (B, heads, h*w, h*w)."""
    h, w = size
    b, heads, _, d = q.shape
    r_h = rel_pos_table(rel_pos_h, h).to(q.dtype)
    r_w = rel_pos_table(rel_pos_w, w).to(q.dtype)
    r_q = q.reshape(b, heads, h, w, d)
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)
    return (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, heads, h * w, h * w)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a (1, H, W, C) absolute position embedding to `grid` (unchanged when equal)."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2), size=tuple(grid), mode="bicubic", align_corners=False
    )
    return resized.permute(0, 2, 3, 1)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split (B, H, W, C) into (B*nW, window, window, C) windows after zero-padding; returns the padded size."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Merge windows from `window_partition` back into (B, H, W, C), dropping the padding."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp, wp) != (h, w) else x
