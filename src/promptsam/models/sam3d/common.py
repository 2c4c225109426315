"""Small layers of the 3D SAM: the 2D ones (models/sam/common.py) work on volumes unchanged."""

from __future__ import annotations

from functools import partial

from torch import nn

from promptsam.models.sam.common import LayerNorm2d, sam_neck

LayerNorm3d = LayerNorm2d  # channel LayerNorm of (B, C, D, H, W) volumes (the official class name)
sam3d_neck = partial(sam_neck, conv=nn.Conv3d)

__all__ = ["LayerNorm3d", "sam3d_neck"]
