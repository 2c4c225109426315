"""SAM's prompt encoder: points, boxes and mask prompts -> sparse and dense embeddings (methods.md §0.3)."""

from __future__ import annotations

import math

import torch
from torch import nn

from promptsam.models.sam.common import LayerNorm2d

# point labels understood by the prompt encoder
NEGATIVE, POSITIVE, PADDING = 0, 1, -1


def mask_downscaling(mask_in_chans: int, embed_dim: int, *, conv: type[nn.Module] = nn.Conv2d) -> nn.Sequential:
    """Mask prompt -> dense embedding at 1/4 resolution (keys mask_downscaling.0..6); `conv=nn.Conv3d` in 3D."""
    return nn.Sequential(
        conv(1, mask_in_chans // 4, kernel_size=2, stride=2),
        LayerNorm2d(mask_in_chans // 4),
        nn.GELU(),
        conv(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
        LayerNorm2d(mask_in_chans),
        nn.GELU(),
        conv(mask_in_chans, embed_dim, kernel_size=1),
    )


def label_points(encoder: nn.Module, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Point tokens (..., C) from positional encodings and labels: padding -> `not_a_point_embed`, negatives and
    positives get `point_embeddings[0]` / `[1]` added (SAM's and SAM-Med3D's prompt encoders alike)."""
    labels = labels[..., None]
    emb = torch.where(labels == PADDING, encoder.not_a_point_embed.weight.to(emb.dtype), emb)
    emb = emb + torch.where(labels == NEGATIVE, encoder.point_embeddings[0].weight, 0.0)
    return emb + torch.where(labels == POSITIVE, encoder.point_embeddings[1].weight, 0.0)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates."""

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode coordinates in [0, 1] of shape (..., 2) into (..., 2 * num_pos_feats)."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of the pixel centres of an (h, w) grid: (C, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        xy = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self.encode(xy).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode pixel coordinates (..., 2) in an image of (h, w)."""
        scale = torch.tensor([image_size[1], image_size[0]], dtype=coords.dtype, device=coords.device)
        return self.encode(coords / scale)


class PromptEncoder(nn.Module):
    """Embeds point, box and mask prompts for SAM's mask decoder."""

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0 negative point, 1 positive point, 2 box top-left, 3 box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = mask_downscaling(mask_in_chans, embed_dim)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid: (1, C, h, w)."""
        return self.pe_layer.grid(self.image_embedding_size)[None]

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Embed (N, P, 2) pixel points with (N, P) labels in {1 positive, 0 negative, -1 padding}."""
        return label_points(self, self.pe_layer.forward_with_coords(points + 0.5, self.input_image_size), labels)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Embed (N, 4) boxes (x1, y1, x2, y2) as two corner tokens: (N, 2, C); NaN rows become padding tokens."""
        missing = boxes.isnan().any(dim=1)
        corners = self.pe_layer.forward_with_coords(
            boxes.nan_to_num(0.0).reshape(-1, 2, 2) + 0.5, self.input_image_size
        )
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        tokens = corners + corner_types
        if missing.any():
            tokens = torch.where(
                missing[:, None, None], self.not_a_point_embed.weight.to(tokens.dtype), tokens
            )
        return tokens

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Embed (N, 1, 4h, 4w) low-resolution mask logits into dense (N, C, h, w); NaN masks get no_mask_embed."""
        missing = masks.flatten(1).isnan().any(dim=1)
        dense = self.mask_downscaling(masks.nan_to_num(0.0))
        if missing.any():
            dense = torch.where(
                missing[:, None, None, None], self.no_mask_embed.weight.reshape(1, -1, 1, 1), dense
            )
        return dense

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return sparse (N, tokens, C) and dense (N, C, h, w) embeddings, as the official encoder does.

        Beyond the official encoder, objects of one batch may differ: a NaN box row or a NaN mask means that object
        has no box (two padding tokens) or no mask prompt (no_mask_embed); point label -1 pads point lists.
        """
        n = next(t.shape[0] for t in (points[0] if points else None, boxes, masks) if t is not None)
        device = self.point_embeddings[0].weight.device
        tokens = []
        if points is not None:
            coords, labels = points
            if boxes is None:  # one padding point stands in for the missing box
                coords = torch.cat([coords, torch.zeros_like(coords[:, :1])], dim=1)
                labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
            tokens.append(self.embed_points(coords, labels))
        if boxes is not None:
            tokens.append(self.embed_boxes(boxes))
        sparse = torch.cat(tokens, dim=1) if tokens else torch.empty(n, 0, self.embed_dim, device=device)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, *self.image_embedding_size)
        return sparse, dense
