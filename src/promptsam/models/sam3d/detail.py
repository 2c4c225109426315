"""An optional fine-resolution branch for SAM-Med3D's mask decoder: the volume and the round's mask prompt at stride 4.

[A] Not in SAM-Med3D or M-SAM. SAM-Med3D draws a mask as the dot product of a hypernetwork vector with the decoder's
upscaled embedding (stride 4, 32³ for a 128³ input), which only holds what the encoder put into its 16³-voxel tokens;
the clicks and the previous mask reach it through those tokens too (the dense prompt is pooled to 8³). Trained from
scratch on a CPU budget, that path neither draws lesions of a few voxels nor ties the output to the click
(docs/benchmarks.md, M-SAM v4-v7). `DetailEncoder3D` reads the volume with two stride-2 convolutions (once per
volume) and, every round, the mask prompt (previous logits with the painted clicks) at its own 32³ grid, mixes them
with a few 3³ convolutions and adds the result to the upscaled embedding, so a click and the voxels around it act
locally, like the 2D branch of `models/sam/detail.py` does for boundaries. Its last layer starts at zero: an untrained
branch leaves SAM-Med3D's masks unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from promptsam.models.sam.detail import mixing_layers, zero_projection


class DetailEncoder3D(nn.Module):
    """(B, 1, S, S, S) volumes -> (B, width, S/r, S/r, S/r) features; with a mask prompt -> (B, channels, ...) detail.

    `stride` r is the input's size over the low-res logits' (4 for SAM-Med3D's 16³ patches; a power of two).
    """

    def __init__(self, channels: int, *, stride: int = 4, width: int = 24) -> None:
        super().__init__()
        steps = stride.bit_length() - 1
        if stride < 1 or 1 << steps != stride:
            raise ValueError(f"stride must be a power of two, got {stride}")
        layers: list[nn.Module] = []
        for i in range(steps):
            layers += [nn.Conv3d(1 if i == 0 else width // 2, width if i == steps - 1 else width // 2, 3, stride=2,
                                 padding=1), nn.GELU()]
        self.stem = nn.Sequential(*layers[:-1]) if steps else nn.Conv3d(1, width, 3, padding=1)
        self.prompt = nn.Conv3d(1, width, 3, padding=1)
        self.mix = nn.Sequential(*mixing_layers(nn.Conv3d, width))
        self.out = zero_projection(nn.Conv3d, width, channels)

    def encode(self, volumes: torch.Tensor) -> torch.Tensor:
        """Volume features (B, width, S/r, S/r, S/r) on the low-res grid, computed once per volume."""
        return self.stem(volumes)

    def forward(self, features: torch.Tensor, mask_prompt: torch.Tensor) -> torch.Tensor:
        """Detail (B, channels, s, s, s) for volume `features` (B or 1, ...) and mask-prompt logits (B, 1, s, s, s)."""
        prompt = torch.tanh(mask_prompt.to(features.dtype) / 2)  # 2 sigmoid - 1: bounded, sign kept
        return self.out(self.mix(features + self.prompt(prompt)))
