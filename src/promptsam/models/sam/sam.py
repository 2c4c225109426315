"""The SAM module: image encoder + prompt encoder + mask decoder, tensors in and tensors out."""

from __future__ import annotations

import torch
from torch import nn

from promptsam.models.sam.mask_decoder import MaskDecoder
from promptsam.models.sam.prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything: `image_size` is the square model input (1024 for the official weights, 256 for nuclei)."""

    def __init__(
        self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.detail: nn.Module | None = None  # optional high-resolution branch (models.sam.detail), off in SAM
        self.refine: nn.Module | None = None  # optional per-object correction around point prompts (needs detail)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        """Side of the square model input in pixels."""
        return self.prompt_encoder.input_image_size[0]

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise (B, 3, H, W) images on the 0-255 scale and zero-pad them bottom/right to image_size."""
        images = (images - self.pixel_mean) / self.pixel_std
        h, w = images.shape[-2:]
        return nn.functional.pad(images, (0, self.image_size - w, 0, self.image_size - h))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, 256, s/16, s/16) of normalised, padded (B, 3, s, s) images."""
        return self.image_encoder(images)

    def embed_details(self, images: torch.Tensor) -> torch.Tensor | None:
        """High-resolution features (B, s/4, s/4, C/8) of the detail branch, or None for a plain SAM."""
        return None if self.detail is None else self.detail(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        *,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = False,
        image_index: torch.Tensor | None = None,
        image_details: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits (N, M, s/4, s/4) and predicted IoU (N, M) for N prompted objects;
        `image_details` are `embed_details` of the same images (required when the model has a detail branch)."""
        if (image_details is None) != (self.detail is None):
            raise ValueError("image_details must be given exactly when the model has a detail branch")
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_inputs)
        masks, iou = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            image_index=image_index,
            image_details=image_details,
        )
        if self.refine is not None and points is not None:
            masks = self.refine(masks, image_details, *points, image_index=image_index)
        return masks, iou
