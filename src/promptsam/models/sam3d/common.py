"""Small layers shared by the 3D encoder, prompt encoder, mask decoder and the Mask-Enhanced Adapter."""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, D, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


def sam3d_neck(in_chans: int, out_chans: int) -> nn.Sequential:
    """SAM-Med3D's encoder neck: 1x1x1 conv, LayerNorm3d, 3x3x3 conv, LayerNorm3d (keys neck.0..3)."""
    return nn.Sequential(
        nn.Conv3d(in_chans, out_chans, kernel_size=1, bias=False),
        LayerNorm3d(out_chans),
        nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm3d(out_chans),
    )
