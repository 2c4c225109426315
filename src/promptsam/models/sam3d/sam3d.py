"""The SAM-Med3D module: volume encoder + 3D prompt encoder + 3D mask decoder, tensors in and tensors out."""

from __future__ import annotations

import torch
from torch import nn

from promptsam.models.sam3d.image_encoder import ImageEncoderViT3D
from promptsam.models.sam3d.mask_decoder import Fuse, MaskDecoder3D
from promptsam.models.sam3d.prompt_encoder import PromptEncoder3D


class Sam3D(nn.Module):
    """SAM-Med3D on cubic volumes of `volume_size` voxels (128 for the official weights).

    The model does no intensity normalisation: the data pipeline z-normalises each volume (methods.md §2). The official
    module's `pixel_mean/std` buffers are non-persistent and unused by SAM-Med3D's own pipeline, so they are left out.
    """

    def __init__(
        self, image_encoder: ImageEncoderViT3D, prompt_encoder: PromptEncoder3D, mask_decoder: MaskDecoder3D
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def volume_size(self) -> int:
        """Side of the cubic model input in voxels."""
        return self.prompt_encoder.input_image_size[0]

    @property
    def device(self) -> torch.device:
        return self.prompt_encoder.no_mask_embed.weight.device

    def embed_volumes(self, volumes: torch.Tensor) -> torch.Tensor:
        """Volume embeddings (B, 384, s/16, s/16, s/16) of z-normalised (B, 1, s, s, s) volumes."""
        s = self.volume_size
        if volumes.ndim != 5 or tuple(volumes.shape[1:]) != (1, s, s, s):
            raise ValueError(f"expected volumes of shape (B, 1, {s}, {s}, {s}), got {tuple(volumes.shape)}")
        return self.image_encoder(volumes)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        *,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = False,
        dense_override: torch.Tensor | None = None,
        fuse: Fuse | None = None,
        details: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits (B, M, s/4, s/4, s/4) and predicted IoU (B, M) for B prompted objects.

        `points` = (coords (B, P, 3) voxel indices in (d0, d1, d2) order, labels (B, P) in {1, 0, -1});
        `mask_inputs` = previous low-resolution logits (B, 1, s/4, s/4, s/4); `dense_override` replaces the dense
        prompt embedding (B, 384, s/16, s/16, s/16) outright; `fuse(image, dense)` replaces `image + dense` in the
        decoder; `details` (B, C/8, s/4, s/4, s/4) is added to the decoder's upscaled embedding. `image_embeddings`
        has a batch of B, or of 1 shared by all objects.
        """
        sparse, dense = self.prompt_encoder(points=points, masks=mask_inputs if dense_override is None else None)
        if dense_override is not None:
            dense = dense_override
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            fuse=fuse,
            details=details,
        )
