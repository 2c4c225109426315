"""An optional high-resolution image branch for SAM's mask decoder (after HQ-SAM, Ke et al., NeurIPS 2023).

SAM draws masks as a dot product of a per-object hypernetwork vector with the decoder's upscaled image embedding
(stride 4), which only holds what the encoder put into its stride-16 tokens. `DetailEncoder` reads the image itself
with a few stride-4 convolutions and adds those features to the upscaled embedding, so boundaries finer than a
token are seen directly. HQ-SAM fuses early ViT features instead; a separate small stem is our choice [A]: it works
the same for every encoder (ViT-B/L/H, TinyViT) and leaves the official weights untouched. Its last layer starts at
zero, so a model with the branch computes exactly SAM's masks until it is trained.
"""

from __future__ import annotations

import torch
from torch import nn

from promptsam.models.sam.common import LayerNorm2d


def mixing_layers(conv: type[nn.Module], width: int) -> list[nn.Module]:
    """Norm, then two 3x3 (or 3x3x3 with nn.Conv3d) convolutions of `width` channels, each followed by GELU."""
    return [LayerNorm2d(width), nn.GELU(), conv(width, width, 3, padding=1), nn.GELU(),
            conv(width, width, 3, padding=1), nn.GELU()]


def zero_projection(conv: type[nn.Module], width: int, channels: int) -> nn.Module:
    """A 1x1 convolution that starts at zero, so an untrained branch adds nothing."""
    out = conv(width, channels, 1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return out


class DetailEncoder(nn.Module):
    """Normalised (B, 3, s, s) images -> (B, s/4, s/4, channels) features, channels-last like the upscaled embedding."""

    def __init__(self, channels: int = 32, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
            *mixing_layers(nn.Conv2d, width),
        )
        self.out = zero_projection(nn.Conv2d, width, channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.stem(images)).permute(0, 2, 3, 1)
