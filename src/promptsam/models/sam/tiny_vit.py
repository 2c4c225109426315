"""MobileSAM's TinyViT-5M image encoder (methods.md §1), resolution-free.

State-dict keys equal MobileSAM's `image_encoder.*` keys (including the unused ImageNet `head`/`norm_head` and
BatchNorm running statistics), so `mobile_sam.pt` loads strictly. Unlike the reference, nothing depends on an
image size: token grids are read from the input at forward time, so any input whose sides are multiples of 64
works. Window attention uses `scaled_dot_product_attention` with the learned relative bias as an additive mask;
eval mode folds BatchNorm into the convs and the network runs channels-last (both exact up to fp32 rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from promptsam.models.sam.common import sam_neck


class ConvBN(nn.Module):
    """Conv2d without bias followed by BatchNorm2d (keys c, bn); folded into one conv in eval mode."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.bn(self.c(x))
        # Eval BN is affine with running statistics: fold it into the conv (differentiable in the parameters).
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        weight = self.c.weight * scale[:, None, None, None]
        bias = self.bn.bias - self.bn.running_mean * scale
        return F.conv2d(x, weight, bias, self.c.stride, self.c.padding, self.c.dilation, self.c.groups)


class PatchEmbed(nn.Module):
    """Stem: two stride-2 3x3 ConvBN with GELU between (keys seq.0, seq.2); (B,3,H,W) -> (B,C,H/4,W/4)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, 3, 2),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, 3, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU (NCHW)."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, bn_weight_init=0.0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(x + self.conv3(y))


class PatchMerging(nn.Module):
    """Downsample between stages: 1x1 ConvBN, 3x3 depthwise ConvBN (stride 2 or 1), 1x1 ConvBN (NCHW)."""

    def __init__(self, dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


def relative_bias_index(window_size: int) -> torch.Tensor:
    """(N, N) index of |dy| * ws + |dx| for N = ws^2 tokens of a window (LeViT's offset order)."""
    ys, xs = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * window_size + (xs[:, None] - xs[None, :]).abs()


class Attention(nn.Module):
    """Pre-LayerNorm multi-head self-attention over window tokens with a learned relative-position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer("attention_bias_idxs", relative_bias_index(window_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # qkv columns are laid out per head as (q, k, v) blocks of head_dim each.
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        # A 4-D mask without grad lets CPU SDPA use its fused (flash) kernel instead of the math fallback.
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype).unsqueeze(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Pre-LayerNorm two-layer MLP (keys norm, fc1, fc2)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, depthwise local conv, MLP on a channels-last (B, H, W, C) token grid."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # registered before local_conv: reference key order
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        # Zero-pad bottom/right to whole windows; padded tokens are not masked (as in the reference).
        pad_h, pad_w = -h % ws, -w % ws
        y = F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        nh, nw = (h + pad_h) // ws, (w + pad_w) // ws
        y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        y = self.attn(y)
        y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        x = x + y[:, :h, :w]
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks then an optional PatchMerging (NCHW in and out)."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 1..3: TinyViT blocks then an optional PatchMerging (NCHW in and out)."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """MobileSAM image encoder: (B, 3, H, W) with H, W multiples of 64 -> (B, out_chans, H/16, W/16)."""

    def __init__(
        self,
        *,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        n = len(depths)
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i in range(n):
            downsample = None
            if i < n - 1:
                # MobileSAM keeps stride 1 in the last merge so the output stride is 16, not 32.
                downsample = PatchMerging(embed_dims[i], embed_dims[i + 1], stride=1 if i == n - 2 else 2)
            if i == 0:
                layer: nn.Module = ConvLayer(embed_dims[0], depths[0], mbconv_expand_ratio, downsample)
            else:
                layer = BasicLayer(
                    embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio, local_conv_size,
                    downsample,
                )
            self.layers.append(layer)
        # Unused ImageNet classifier, kept so official checkpoints load strictly.
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        self.neck = sam_neck(embed_dims[-1], out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last memory makes the (depthwise) convs faster on CPU and the NCHW <-> token permutes free.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x).contiguous()


def _init_weights(m: nn.Module) -> None:
    """TinyViT's init: truncated-normal Linear weights (std 0.02), zero biases, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def tiny_vit_5m(**overrides: object) -> TinyViT:
    """MobileSAM's TinyViT-5M encoder (methods.md §1); keyword overrides replace config entries."""
    config: dict[str, object] = {
        "embed_dims": (64, 128, 160, 320),
        "depths": (2, 2, 6, 2),
        "num_heads": (2, 4, 5, 10),
        "window_sizes": (7, 7, 14, 7),
        "mlp_ratio": 4.0,
        "mbconv_expand_ratio": 4.0,
        "local_conv_size": 3,
        "out_chans": 256,
    }
    config.update(overrides)
    return TinyViT(**config)  # type: ignore[arg-type]
