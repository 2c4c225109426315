"""SAM-Med3D's volume encoder: a ViTDet-style ViT on 16³ patches with decomposed 3D relative positions (methods.md §2).

State-dict keys equal the official `image_encoder.*` keys. The math is the official one, quirks included: window
blocks zero-pad the normalised token grid to a multiple of the window (8³ -> 14³ at 128³ input, one window) and the
padded tokens take part as keys and values, and the relative-position term puts its three parts on other key axes
than MViTv2 does (see `official_rel_pos_bias_3d`). Two exact shortcuts keep it cheap (about 7x faster than the
official code on CPU): the qkv projection runs on the real tokens only (a zero token projects to `qkv(0)`, which fills
the padding), and when the padded grid is a single window only the real tokens are queried, since the official code
discards the padded queries' outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from promptsam.models.sam.common import MLPBlock
from promptsam.models.sam.image_encoder import rel_pos_table
from promptsam.models.sam3d.common import sam3d_neck

Size3 = tuple[int, int, int]


class ImageEncoderViT3D(nn.Module):
    """ViT volume encoder: (B, in_chans, S, S, S) with S = img_size -> (B, out_chans, S/16, S/16, S/16)."""

    def __init__(
        self,
        *,
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 384,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                rel_pos_size=grid if i in global_attn_indexes else window_size,
            )
            for i in range(depth)
        )
        self.neck = sam3d_neck(embed_dim, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))


class PatchEmbed3D(nn.Module):
    """Non-overlapping cubic patch projection: (B, C, D, H, W) -> (B, D/p, H/p, W/p, E)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class Block3D(nn.Module):
    """Pre-norm transformer block with cubic-window (window_size > 0) or global attention."""

    def __init__(
        self, *, dim: int, num_heads: int, mlp_ratio: float, window_size: int, rel_pos_size: int
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention3D(dim, num_heads, rel_pos_size=rel_pos_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), window=self.window_size)
        return x + self.mlp(self.norm2(x))


class Attention3D(nn.Module):
    """Multi-head attention over a (B, D, H, W, C) token grid with decomposed d/h/w relative positions, by SDPA."""

    def __init__(self, dim: int, num_heads: int, *, rel_pos_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))

    def forward(self, x: torch.Tensor, window: int = 0) -> torch.Tensor:
        """Global attention (window 0) or attention inside zero-padded cubic windows of side `window`."""
        d, h, w = x.shape[1:4]
        qkv = self.qkv(x)
        if window == 0:
            return self.proj(self.attend(qkv, (d, h, w)))
        # the official code zero-pads the normalised tokens; a zero token projects to qkv(0)
        grid = pad_grid(qkv, window, self.qkv(x.new_zeros(x.shape[-1])))
        if tuple(grid.shape[1:4]) == (window,) * 3:
            return self.proj(self.attend(grid, (d, h, w)))  # one window: the padded queries would be discarded
        windows = window_partition3d(grid, window)
        out = self.attend(windows, (window,) * 3)
        return self.proj(window_unpartition3d(out, window, tuple(grid.shape[1:4]), (d, h, w)))

    def attend(self, grid: torch.Tensor, q_size: Size3) -> torch.Tensor:
        """Attention in a cubic grid (N, K, K, K, 3C) for the queries grid[:, :qd, :qh, :qw] -> (N, qd, qh, qw, C)."""
        n = grid.shape[0]
        heads = self.num_heads
        qkv = grid.reshape(n, -1, 3, heads, grid.shape[-1] // (3 * heads)).permute(2, 0, 3, 1, 4)
        q_all, k, v = qkv.unbind(0)  # (N, heads, K^3, c)
        q_grid = q_all.reshape(n, heads, *grid.shape[1:4], -1)
        bias = official_rel_pos_bias_3d(q_grid, (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w), q_size)
        qd, qh, qw = q_size
        q = q_grid[:, :, :qd, :qh, :qw].reshape(n, heads, qd * qh * qw, -1)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return x.transpose(1, 2).reshape(n, qd, qh, qw, -1)


def official_rel_pos_bias_3d(
    q_grid: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor], q_size: Size3
) -> torch.Tensor:
    """SAM-Med3D's relative-position bias for the queries q_grid[:, :, :qd, :qh, :qw] -> (N, heads, Nq, K^3).

    `q_grid` (N, heads, K, K, K, c) holds the unscaled queries of a whole cubic grid. With R_a[i, j] = table_a[i - j +
    K - 1] and q(x, y, z) the query at grid position (x, y, z), the official `add_decomposed_rel_pos` broadcasts its
    three terms onto other axes than MViTv2's q(x, y, z)·(R_d[x, i] + R_h[y, j] + R_w[z, l]); for key (i, j, l) it adds

        q(x, y, z)·R_d[x, l] + q(x, y, i)·R_h[y, l] + q(x, y, j)·R_w[j, l]

    The pretrained weights were trained with this function, so it is reproduced exactly; it reads the queries of other
    grid positions (padding included), hence the whole grid as input.
    """
    n, heads = q_grid.shape[:2]
    k_size = q_grid.shape[2]
    if tuple(q_grid.shape[2:5]) != (k_size,) * 3:
        raise ValueError(f"the official relative-position term needs a cubic grid, got {tuple(q_grid.shape[2:5])}")
    qd, qh, qw = q_size
    r_d, r_h, r_w = (rel_pos_table(table, k_size).to(q_grid.dtype) for table in tables)
    rows = q_grid[:, :, :qd, :qh]  # (N, heads, qd, qh, K, c)
    term_d = torch.einsum("bnxyzc,xlc->bnxyzl", rows[:, :, :, :, :qw], r_d[:qd])  # (N, heads, qd, qh, qw, l)
    term_h = torch.einsum("bnxyic,ylc->bnxyil", rows, r_h[:qh])  # (N, heads, qd, qh, i, l)
    term_w = torch.einsum("bnxyjc,jlc->bnxyjl", rows, r_w)  # (N, heads, qd, qh, j, l)
    bias = (
        term_d[:, :, :, :, :, None, None, :]
        + term_h[:, :, :, :, None, :, None, :]
        + term_w[:, :, :, :, None, None, :, :]
    )
    return bias.reshape(n, heads, qd * qh * qw, k_size**3)


def pad_grid(x: torch.Tensor, window: int, value: torch.Tensor) -> torch.Tensor:
    """Pad (B, D, H, W, C) at the far end of each axis to multiples of `window`, filling with the vector `value`."""
    b, d, h, w, c = x.shape
    dp, hp, wp = (-(-s // window) * window for s in (d, h, w))
    if (dp, hp, wp) == (d, h, w):
        return x
    out = value.to(x.dtype).expand(b, dp, hp, wp, c).clone()
    out[:, :d, :h, :w] = x
    return out


def window_partition3d(x: torch.Tensor, window: int) -> torch.Tensor:
    """Split (B, D, H, W, C), each side a multiple of `window`, into (B * nW, window, window, window, C)."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window, window, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window, window, window, c)


def window_unpartition3d(windows: torch.Tensor, window: int, padded: Size3, size: Size3) -> torch.Tensor:
    """Merge windows from `window_partition3d` back into (B, D, H, W, C) of `size`, dropping the padding."""
    dp, hp, wp = padded
    d, h, w = size
    b = windows.shape[0] // ((dp // window) * (hp // window) * (wp // window))
    x = windows.view(b, dp // window, hp // window, wp // window, window, window, window, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, dp, hp, wp, -1)
    return x[:, :d, :h, :w].contiguous() if (dp, hp, wp) != (d, h, w) else x
