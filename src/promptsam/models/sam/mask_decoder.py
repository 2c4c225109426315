"""SAM's mask decoder: two-way transformer, upscaling and hypernetwork heads (methods.md §0.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from promptsam.models.sam.common import LayerNorm2d
from promptsam.models.sam.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts mask logits and IoU scores from an image embedding and prompt embeddings."""

    def __init__(
        self,
        *,
        transformer_dim: int = 256,
        transformer: nn.Module | None = None,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer()
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        image_index: torch.Tensor | None = None,
        image_details: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (N, M, 4h, 4w) and IoU (N, M) for N prompts; M = 3 with multimask_output, else 1.

        `image_embeddings` is (B, C, h, w); prompt i reads image `image_index[i]` (all zeros when omitted, so a
        single image serves every prompt, as in the official decoder). `image_details` (B, 4h, 4w, C/8), when
        given, are added to the upscaled embedding (models.sam.detail).
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_index, image_details
        )
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_index: torch.Tensor | None = None,
        image_details: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask-token outputs: masks (N, 4, 4h, 4w) and IoU (N, 4)."""
        n = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.to(sparse_prompt_embeddings.dtype).unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        dense = dense_prompt_embeddings
        if dense.shape[0] > 1 and dense.stride(0) == 0:  # one dense embedding broadcast over all prompts
            dense = dense[:1]
        if image_index is not None and image_embeddings.shape[0] > 1:
            image_embeddings = image_embeddings[image_index]
            image_details = image_details[image_index] if image_details is not None else None
        # when every prompt reads one image with one dense embedding, src keeps a batch of 1: while the image
        # tokens are still the same for all prompts (layer 0) their projections are computed once and broadcast
        src = image_embeddings + dense
        _, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.upscale(src.expand(n, -1, -1), (h, w))  # (N, 4h, 4w, C/8), channels last
        if image_details is not None:
            upscaled = upscaled + image_details.to(upscaled.dtype)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = hyper_in @ upscaled.reshape(n, -1, upscaled.shape[-1]).transpose(1, 2)
        masks = masks.reshape(n, -1, 4 * h, 4 * w)
        return masks, self.iou_prediction_head(iou_token_out)

    def upscale(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """`output_upscaling` on image tokens (N, h*w, C) -> (N, 4h, 4w, C/8), computed channels-last.

        A 2x2 stride-2 transposed convolution is a per-pixel linear map to 2x2 sub-pixels; done as one matmul
        plus a pixel shuffle it runs at matmul speed (in bf16 too), with the same weights and result.
        """
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        x = act1(
            F.layer_norm(
                _conv_transpose_2x2(tokens, size, conv1), norm.weight.shape, norm.weight, norm.bias, norm.eps
            )
        )
        h, w = size
        return act2(_conv_transpose_2x2(x.reshape(x.shape[0], -1, x.shape[-1]), (2 * h, 2 * w), conv2))


def _conv_transpose_2x2(
    tokens: torch.Tensor, size: tuple[int, int], conv: nn.ConvTranspose2d
) -> torch.Tensor:
    """ConvTranspose2d(kernel 2, stride 2) on channels-last tokens (N, h*w, Cin) -> (N, 2h, 2w, Cout)."""
    n = tokens.shape[0]
    h, w = size
    c_in, c_out = conv.weight.shape[:2]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)  # columns ordered (dy, dx, c_out)
    bias = conv.bias.repeat(4) if conv.bias is not None else None
    y = F.linear(tokens, weight.T, bias).reshape(n, h, w, 2, 2, c_out)
    return y.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c_out)


class MLP(nn.Module):
    """Plain MLP with ReLU between layers (keys layers.0..k)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x
