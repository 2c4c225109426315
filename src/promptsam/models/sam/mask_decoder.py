"""SAM's mask decoder: two-way transformer, upscaling and hypernetwork heads (methods.md §0.4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from promptsam.models.sam.common import LayerNorm2d, fusable
from promptsam.models.sam.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts mask logits and IoU scores from an image embedding and prompt embeddings."""

    # prompts decoded together: a chunk's image tokens (chunk * h * w * C) stay cache-sized, matmuls stay large
    chunk_tokens: int = 4096

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
        given, are added to the upscaled embedding (models.sam.detail). Only the returned mask tokens are decoded.
        """
        chosen = list(range(1, self.num_mask_tokens)) if multimask_output else [0]
        masks, iou_pred = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            image_index,
            image_details,
            mask_tokens=chosen,
        )
        return masks, iou_pred[:, chosen]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_index: torch.Tensor | None = None,
        image_details: torch.Tensor | None = None,
        mask_tokens: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (N, len(mask_tokens), 4h, 4w) of the given mask tokens (all 4 by default) and IoU (N, 4)."""
        mask_tokens = list(range(self.num_mask_tokens)) if mask_tokens is None else list(mask_tokens)
        n = sparse_prompt_embeddings.shape[0]
        _, c, h, w = image_embeddings.shape
        # channels-last image tokens (B, h*w, C), laid out once per image
        images = image_embeddings.flatten(2).transpose(1, 2).contiguous()
        dense = dense_prompt_embeddings
        if dense.shape[0] > 1 and dense.stride(0) == 0:  # one dense embedding broadcast over all prompts
            dense = dense[:1]
        dense = dense.flatten(2).transpose(1, 2)
        details = None if image_details is None else _subpixel_order(image_details)
        if images.shape[0] > 1 and image_index is None:
            image_index = torch.arange(n, device=images.device)
        pe = image_pe.flatten(2).transpose(1, 2)
        step = max(1, self.chunk_tokens // (h * w))
        outputs = []
        for start in range(0, n, step):
            part = slice(start, min(n, start + step))
            index = None if images.shape[0] == 1 else image_index[part]
            outputs.append(
                self._decode(
                    images if index is None else images[index],
                    pe,
                    sparse_prompt_embeddings[part],
                    dense if dense.shape[0] == 1 else dense[part],
                    None if details is None else details if index is None else details[index],
                    mask_tokens,
                    (h, w),
                )
            )
        if len(outputs) == 1:
            return outputs[0]
        return torch.cat([m for m, _ in outputs]), torch.cat([i for _, i in outputs])

    def _decode(
        self,
        images: torch.Tensor,
        pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        details: torch.Tensor | None,
        mask_tokens: list[int],
        size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk of prompts: image tokens (n or 1, L, C), dense (n or 1, L, C) -> masks, IoU (n, 4)."""
        n = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.to(sparse.dtype).unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat([output_tokens, sparse], dim=1)
        # an image batch of 1 (one image, one dense embedding) stays shared until the first block mixes in prompts
        src = images + dense
        hs, src = self.transformer.run(src, pe, tokens, final_tokens=[0] + [1 + i for i in mask_tokens])
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](hs[:, 1 + j, :]) for j, i in enumerate(mask_tokens)], dim=1
        )
        upscaled = self.upscale(src, size)  # (n, 16 h w, C/8) in sub-pixel order
        if details is not None:
            upscaled = upscaled + details.to(upscaled.dtype)
        masks = torch.bmm(hyper_in.to(upscaled.dtype), upscaled.transpose(1, 2))
        return _raster_order(masks, size), self.iou_prediction_head(hs[:, 0, :])

    def upscale(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """`output_upscaling` on image tokens (N, h*w, C) -> (N, 16*h*w, C/8), channels last, in sub-pixel order.

        A 2x2 stride-2 transposed convolution is a per-pixel linear map to 2x2 sub-pixels, so both run as plain
        matmuls with the same weights; the pixels stay ordered (i, j, dy, dx, ey, ex) for output pixel
        (4i + 2dy + ey, 4j + 2dx + ex), which the per-pixel LayerNorm and GELU do not care about
        (`_raster_order` / `_subpixel_order` convert).
        """
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        n = tokens.shape[0]
        weight, bias = _conv_transpose_2x2_as_linear(conv1)
        x = F.linear(tokens, weight, bias).view(n, -1, conv1.weight.shape[1])  # (N, 4*h*w, C/4)
        x = act1(F.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps))
        weight, bias = _conv_transpose_2x2_as_linear(conv2)
        return _linear_gelu(x, weight, bias, act2.approximate).view(n, -1, conv2.weight.shape[1])


def _conv_transpose_2x2_as_linear(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ConvTranspose2d(kernel 2, stride 2) as an `F.linear` weight (4*Cout, Cin), bias: outputs (dy, dx, Cout)."""
    c_in, c_out = conv.weight.shape[:2]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out).T
    return weight, None if conv.bias is None else conv.bias.repeat(4)


def _linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    """`gelu(F.linear(x, weight, bias))`, as one oneDNN call on CPU when no gradients are recorded.

    The fused call skips a pass over the largest tensor of the decoder (about 10% of a batched decode).
    """
    if bias is not None and fusable(x):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype in (torch.float32, torch.bfloat16):
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], approximate)
    return F.gelu(F.linear(x, weight, bias), approximate=approximate)



def _raster_order(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks (N, M, 16*h*w) in sub-pixel order (i, j, dy, dx, ey, ex) -> (N, M, 4h, 4w)."""
    h, w = size
    n, m = masks.shape[:2]
    masks = masks.view(n, m, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return masks.reshape(n, m, 4 * h, 4 * w)


def _subpixel_order(maps: torch.Tensor) -> torch.Tensor:
    """Channels-last maps (B, 4h, 4w, C) -> (B, 16*h*w, C) in the sub-pixel order of `MaskDecoder.upscale`."""
    b, hh, ww, c = maps.shape
    maps = maps.reshape(b, hh // 4, 2, 2, ww // 4, 2, 2, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return maps.reshape(b, -1, c)


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
