"""MobileSAM's TinyViT-5M image encoder (methods.md §1), resolution-free.

State-dict keys equal MobileSAM's `image_encoder.*` keys (including the unused ImageNet `head`/`norm_head` and
BatchNorm running statistics), so `mobile_sam.pt` loads strictly. Unlike the reference, nothing depends on an
image size: token grids are read from the input at forward time, so any input whose sides are multiples of 64
works. Eval mode folds BatchNorm into the convs and the network runs channels-last.

Window attention computes what the reference's zero-padded windows compute, on the real tokens only. The reference
pads the grid with zero vectors before the attention's LayerNorm, so every padded token normalises to the LN bias
and has the same key and value (k0, v0) = qkv(LN.bias); the relative bias B (a learned per-head table indexed by
|dy| * ws + |dx|) does not depend on the queries; padded queries are dropped. For a real query i the padded
positions P of its window therefore contribute sum_{j in P} exp(s q_i.k0 + B_ij) v0 = exp(s q_i.k0 + L_i) v0 with
L_i = logsumexp_{j in P} B_ij: they collapse exactly into one key (k0, v0) with additive bias L_i. Windows are
grouped by how many of their rows and columns are real (full windows; the last window row, column, corner), and
each group runs one SDPA over its real tokens plus, if it has padding, one zero token; LayerNorm, qkv, attention
and proj see no other token (at 256 input the 14-token windows of the 16x16 stage attend 256 + 3 tokens instead
of 784). The masks (gathered biases and the logsumexp column) are cached while no autograd graph is recorded.

Inference without autograd also runs oneDNN's fused conv / linear + GELU or + residual kernels, caches the
BN-folded conv weights, computes each MBConv by bands of rows (see `MBConv.forward`) and the neck's LayerNorm2d
as one `layer_norm` on the channels-last map; with autograd the same math runs as plain ops. Everything is exact
up to fp32 rounding (tests/test_tiny_vit.py, tests/test_tiny_vit_speed_paths.py).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from promptsam.models.sam.common import DerivedCache, autocast_cast, conv_gelu, fold_batchnorm, fusable, sam_neck
from promptsam.models.sam.image_encoder import spans

# Hidden activation band of an MBConv computed at once in inference (bytes, but at least 8 rows, so that the halo
# rows computed twice stay <= 25%); see MBConv.forward.
TILE_BYTES = 2**20


def linear(
    x: torch.Tensor, layer: nn.Linear, *, gelu: bool = False, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """GELU(layer(x)) if `gelu`, residual + layer(x) if `residual` is given (one oneDNN kernel when fusable)."""
    if fusable(x):
        x, weight, bias, res = autocast_cast(x, layer.weight, layer.bias, residual)
        if res is None:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none")
        if not gelu and res.dtype == x.dtype:
            return torch.ops.mkldnn._linear_pointwise.binary(x, res, weight, bias, "add")
    y = layer(x)
    y = y if residual is None else residual + y
    return F.gelu(y) if gelu else y


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
        self.folded_cache = DerivedCache()

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the conv with eval BatchNorm (affine with running statistics) folded in."""
        return fold_batchnorm(self.c, self.bn)

    def forward(self, x: torch.Tensor, *, gelu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """BN(conv(x)), plus `residual` if given, then GELU if `gelu`."""
        if self.training:
            y = self.bn(self.c(x))
        else:
            # Eval BN folded into the conv (differentiable in the parameters; cached when no grad is recorded).
            c, bn = self.c, self.bn
            params = (c.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
            weight, bias = self.folded_cache.get(params, "folded", self.folded)
            if gelu and residual is None:
                return conv_gelu(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)
            if fusable(x):
                x, weight, bias, residual = autocast_cast(x, weight, bias, residual)
                args = (weight, bias, c.padding, c.stride, c.dilation, c.groups)
                if residual is None:
                    return torch.ops.mkldnn._convolution_pointwise(x, *args, "none", [], "none")
                # oneDNN fuses the residual add or a GELU, not both
                y = torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *args, "add", None, None, [], None)
                return F.gelu(y) if gelu else y
            y = F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)
        y = y if residual is None else residual + y
        return F.gelu(y) if gelu else y


class PatchEmbed(nn.Module):
    """Stem: two stride-2 3x3 ConvBN with GELU between (keys seq.0, seq.2); (B,3,H,W) -> (B,C,H/4,W/4)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, 3, 2),
            nn.GELU(),  # applied by seq[0] itself
            ConvBN(embed_dim // 2, embed_dim, 3, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/4, W/4)."""
        return self.seq[2](self.seq[0](x, gelu=True))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU (NCHW)."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(x + conv3(GELU(conv2(GELU(conv1(x)))))); by bands of rows in inference on large maps."""
        h, w = x.shape[2:]
        rows = max(8, TILE_BYTES // (w * self.conv1.c.out_channels * x.element_size() * x.shape[0]))
        if self.training or not fusable(x) or rows >= h:  # BatchNorm on batch statistics needs the whole map
            return self.block(x)
        # Inference by bands of rows, each with a one-row halo for the 3x3 depthwise conv (whose extra output rows,
        # wrong at an inner edge, are dropped): the 4x wider hidden maps stay small and are reused by the
        # allocator instead of being page-faulted in fresh at every call (at 1024 input they would be 64 MB each).
        bands = []
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            a0 = max(0, r0 - 1)
            y = self.conv2(self.conv1(x[:, :, a0 : r1 + 1], gelu=True), gelu=True)
            bands.append(self.conv3(y[:, :, r0 - a0 : r1 - a0], residual=x[:, :, r0:r1], gelu=True))
        return torch.cat(bands, dim=2)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        """The block on the whole map."""
        y = self.conv2(self.conv1(x, gelu=True), gelu=True)
        return self.conv3(y, residual=x, gelu=True)


class PatchMerging(nn.Module):
    """Downsample between stages: 1x1 ConvBN, 3x3 depthwise ConvBN (stride 2 or 1), 1x1 ConvBN (NCHW)."""

    def __init__(self, dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv3(GELU(conv2(GELU(conv1(x)))))."""
        return self.conv3(self.conv2(self.conv1(x, gelu=True), gelu=True))


def relative_bias_index(window_size: int) -> torch.Tensor:
    """(N, N) index of |dy| * ws + |dx| for N = ws^2 tokens of a window (LeViT's offset order)."""
    ys, xs = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * window_size + (xs[:, None] - xs[None, :]).abs()


@functools.cache
def window_bias_index(window_size: int, real: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bias indices from the real tokens (the top-left qh x qw, row-major) of a window to its real (L, L) and to
    its padded (L, ws^2 - L) positions."""
    with torch.inference_mode(False):  # cached for later calls, which may record autograd
        inside = [r * window_size + c for r in range(real[0]) for c in range(real[1])]
        outside = sorted(set(range(window_size * window_size)) - set(inside))
        from_real = relative_bias_index(window_size)[inside]
        return from_real[:, inside], from_real[:, outside]


def window_view(x: torch.Tensor, rows: slice, cols: slice, size: tuple[int, int]) -> torch.Tensor:
    """The (qh, qw) = `size` windows tiling x[:, rows, cols] of a (B, H, W, C) grid as a view (B, nh, nw, qh, qw, C)."""
    region = x[:, rows, cols]
    return region.unflatten(1, (-1, size[0])).unflatten(3, (-1, size[1])).transpose(2, 3)


class Attention(nn.Module):
    """Pre-LayerNorm multi-head self-attention in windows of a token grid, with a learned relative-position bias."""

    qkv_per_head = True  # qkv outputs are (q, k, v) blocks per head (models.adapters.add_lora reads this)

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.masks = DerivedCache()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, C) tokens -> attention output of the reference's zero-padded windows (+ `residual`).

        Windows are grouped by their real extent (full ones, the last window row, column, corner); each group
        attends among its real tokens plus one zero token standing for all its padding (module docstring).
        """
        b, h, w, c = x.shape
        ws = self.window_size
        groups = []
        for rows, qh in spans(h, ws):
            for cols, qw in spans(w, ws):
                region = window_view(x, rows, cols, (qh, qw))
                n, size = region.shape[0] * region.shape[1] * region.shape[2], qh * qw
                padded = int(size < ws * ws)
                tokens = x.new_empty(n, size + padded, c)
                tokens[:, :size].view(region.shape).copy_(region)
                if padded:  # the reference's zero padding token, before LayerNorm
                    tokens[:, size].zero_()
                groups.append((rows, cols, (qh, qw), self.attend(tokens, (qh, qw))))
        out = groups[0][-1].new_empty(b, h, w, c)
        for rows, cols, size, y in groups:
            region = window_view(out, rows, cols, size)
            region.copy_(y.view(region.shape))
        return linear(out, self.proj, residual=residual)

    def attend(self, tokens: torch.Tensor, real: tuple[int, int]) -> torch.Tensor:
        """Windows (N, L [+ 1 zero token], C) whose L = qh * qw real tokens are row-major -> (N, L, C) outputs
        before the output projection."""
        n, _, c = tokens.shape
        size = real[0] * real[1]
        heads = self.num_heads
        # qkv columns are laid out per head as (q, k, v) blocks of head_dim each.
        qkv = self.qkv(self.norm(tokens)).view(n, -1, heads, 3 * (c // heads)).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        # A 4-D mask without grad lets CPU SDPA use its fused (flash) kernel instead of the math fallback.
        x = F.scaled_dot_product_attention(q[:, :, :size], k, v, attn_mask=self.mask(real, q.dtype))
        return x.transpose(1, 2).reshape(n, size, c)

    def mask(self, real: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """Additive mask (1, heads, L, L [+ 1]) for windows with `real` = (qh, qw) real tokens at their top left.

        Columns: the relative bias to each real key, then (if the window has padding) the logsumexp of the biases
        to all its padded positions, which the single zero key stands for. Cached while no grad is recorded.
        """
        return self.masks.get((self.attention_biases,), (real, dtype), lambda: self._build_mask(real, dtype))

    def _build_mask(self, real: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """`mask` computed from the bias table (differentiable)."""
        ab = self.attention_biases
        to_real, to_pad = [i.to(ab.device) for i in window_bias_index(self.window_size, real)]
        mask = ab[:, to_real]
        if to_pad.shape[1]:
            mask = torch.cat([mask, ab[:, to_pad].logsumexp(dim=-1, keepdim=True)], dim=-1)
        return mask.to(dtype).unsqueeze(0).contiguous()


class Mlp(nn.Module):
    """Pre-LayerNorm two-layer MLP (keys norm, fc1, fc2)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """fc2(GELU(fc1(LN(x)))), plus `residual` if given."""
        return linear(linear(self.norm(x), self.fc1, gelu=True), self.fc2, residual=residual)


class TinyViTBlock(nn.Module):
    """Window attention, depthwise local conv, MLP on a channels-last (B, H, W, C) token grid."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # registered before local_conv: reference key order
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + attention, then local conv, then + MLP; (B, H, W, C) -> (B, H, W, C)."""
        x = self.attn(x, residual=x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.mlp(x, residual=x)


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
        self.neck_weight = DerivedCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> image embedding (B, out_chans, H/16, W/16)."""
        # Channels-last memory makes the (depthwise) convs faster on CPU and the NCHW <-> token permutes free.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.forward_neck(x)

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        """`self.neck` on channels-last features: LayerNorm2d as one `layer_norm` over the contiguous channel axis,
        the 3x3 conv with its weight cached in channels-last layout (else converted at every call)."""
        conv1, norm1, conv2, norm2 = self.neck
        x = layer_norm_2d(F.conv2d(x, conv1.weight), norm1)
        weight = self.neck_weight.get(
            (conv2.weight,), "channels_last", lambda: conv2.weight.contiguous(memory_format=torch.channels_last)
        )
        x = F.conv2d(x, weight, None, conv2.stride, conv2.padding)
        return layer_norm_2d(x, norm2).contiguous()


def layer_norm_2d(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """SAM's LayerNorm2d `norm` (weight, bias, eps) over the channels of (B, C, H, W), computed channels-last."""
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), norm.weight, norm.bias, norm.eps)
    return y.permute(0, 3, 1, 2)


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
