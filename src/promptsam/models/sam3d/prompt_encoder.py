"""SAM-Med3D's prompt encoder: 3D points and low-resolution mask logits -> sparse and dense embeddings (methods.md §2).

Points are voxel indices in tensor order (d0, d1, d2) of the model input. The official dense grid encoding stacks its
coordinates as [index along dim 1, index along dim 0, index along dim 2], so the first two axes are swapped between the
dense and the sparse encodings; pretrained weights were trained with that, and it is reproduced exactly here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from promptsam.models.sam.prompt_encoder import PADDING, label_points, mask_downscaling

Size3 = tuple[int, int, int]


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of normalised 3D coordinates, encoded as [sin, cos, sin] (the official repeat)."""

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode coordinates in [0, 1] of shape (..., 3) into (..., 3 * num_pos_feats)."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords), torch.sin(coords)], dim=-1)

    def grid(self, size: Size3) -> torch.Tensor:
        """Dense encoding of the voxel centres of a (d0, d1, d2) grid: (C, d0, d1, d2), with the official axis order."""
        device = self.positional_encoding_gaussian_matrix.device
        centres = [torch.arange(n, device=device, dtype=torch.float32) + 0.5 for n in size]
        i0, i1, i2 = torch.meshgrid(*centres, indexing="ij")
        # official quirk: channel 0 is the dim-1 index over size[0], channel 1 the dim-0 index over size[1]
        coords = torch.stack([i1 / size[0], i0 / size[1], i2 / size[2]], dim=-1)
        return self.encode(coords).permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: torch.Tensor, volume_size: Size3) -> torch.Tensor:
        """Encode voxel coordinates (..., 3) in (d0, d1, d2) order in a volume of `volume_size`."""
        scale = torch.tensor(volume_size, dtype=torch.float32, device=coords.device)
        return self.encode(coords.float() / scale)


class PromptEncoder3D(nn.Module):
    """Embeds point and mask prompts for SAM-Med3D's mask decoder (no boxes: the official model has none)."""

    def __init__(
        self,
        *,
        embed_dim: int = 384,
        image_embedding_size: Size3 = (8, 8, 8),
        input_image_size: Size3 = (128, 128, 128),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        # 0 negative point, 1 positive point
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = mask_downscaling(mask_in_chans, embed_dim, conv=nn.Conv3d)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid: (1, C, d0, d1, d2)."""
        return self.pe_layer.grid(self.image_embedding_size)[None]

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Embed (B, P, 3) voxel points with (B, P) labels in {1 positive, 0 negative, -1 padding} -> (B, P, C)."""
        return label_points(self, self.pe_layer.forward_with_coords(points + 0.5, self.input_image_size), labels)

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Embed (B, 1, 4d0, 4d1, 4d2) low-resolution mask logits into dense (B, C, d0, d1, d2)."""
        return self.mask_downscaling(masks)

    def forward(
        self, points: tuple[torch.Tensor, torch.Tensor] | None, masks: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, P + 1, C) and dense (B, C, d0, d1, d2) embeddings; a padding point is appended, as officially."""
        b = points[0].shape[0] if points is not None else masks.shape[0] if masks is not None else 1
        if points is not None:
            coords, labels = points
            coords = torch.cat([coords, torch.zeros_like(coords[:, :1])], dim=1)
            labels = torch.cat([labels, torch.full_like(labels[:, :1], PADDING)], dim=1)
            sparse = self.embed_points(coords, labels)
        else:
            sparse = torch.empty(b, 0, self.embed_dim, device=self.no_mask_embed.weight.device)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(b, -1, *self.image_embedding_size)
        return sparse, dense
