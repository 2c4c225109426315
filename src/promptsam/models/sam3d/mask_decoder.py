"""SAM-Med3D's mask decoder: SAM's two-way transformer on 3D tokens, 3D upscaling, hypernetwork heads (methods.md §2).

The two-way transformer only sees token sequences, so SAM's 2D module is reused as is (same keys, same math).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from promptsam.models.sam.mask_decoder import MLP
from promptsam.models.sam.transformer import TwoWayTransformer
from promptsam.models.sam3d.common import LayerNorm3d

Fuse = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MaskDecoder3D(nn.Module):
    """Predicts low-resolution mask logits and IoU scores from a volume embedding and prompt embeddings."""

    def __init__(
        self,
        *,
        transformer_dim: int = 384,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = TwoWayTransformer(depth=2, embedding_dim=transformer_dim, num_heads=8, mlp_dim=2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm3d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool = False,
        fuse: Fuse | None = None,
        details: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B, M, 4d, 4h, 4w) and IoU (B, M) for B prompted objects; M = 3 with multimask_output, else 1.

        `image_embeddings` is (B or 1, C, d, h, w); `fuse(image, dense)` replaces the official `image + dense` source of
        the transformer (M-SAM's Mask-Enhanced Adapter plugs in here); `details` (B, C/8, 4d, 4h, 4w), when given, is
        added to the upscaled embedding ([A] `sam3d.detail.DetailEncoder3D`).
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, fuse, details
        )
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        fuse: Fuse | None = None,
        details: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask-token outputs: masks (B, 4, 4d, 4h, 4w) and IoU (B, 4)."""
        n = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.to(sparse_prompt_embeddings.dtype).unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        image = image_embeddings.expand(n, -1, -1, -1, -1) if image_embeddings.shape[0] == 1 else image_embeddings
        dense = dense_prompt_embeddings.expand(n, -1, -1, -1, -1)
        src = fuse(image, dense) if fuse is not None else image + dense
        _, c, d, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(n, c, d, h, w))
        if details is not None:
            upscaled = upscaled + details.to(upscaled.dtype)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = (hyper_in @ upscaled.flatten(2)).reshape(n, -1, *upscaled.shape[2:])
        return masks, self.iou_prediction_head(iou_token_out)
