"""The M-SAM network (MICCAI 2024): SAM-Med3D with a LoRA-tuned encoder and the Mask-Enhanced Adapter (methods.md §5).

Forward pieces only; the click simulation and the training loop live with the method. One refinement round:
E_I = encoder(volume) (once per volume), sparse = PE(click) + padding token, E_M = mask_downscaling(previous low-res
logits), src = MEA(E_I, E_M), then SAM-Med3D's decoder -> low-res logits (B, 1, 32, 32, 32) and IoU.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from promptsam.inference.clicks import paint_clicks
from promptsam.models.adapters import add_lora
from promptsam.models.mea import MaskEnhancedAdapter
from promptsam.models.sam3d.build import build_sam3d
from promptsam.models.sam3d.detail import DetailEncoder3D
from promptsam.models.sam3d.sam3d import Sam3D


class MSam(nn.Module):
    """SAM-Med3D + LoRA (rank `lora_rank`) on q and v of the encoder's attention + MEA fusion before the mask decoder.

    LoRA as in the official code: each block's fused `qkv` Linear gets `q += B_q A_q x` and `v += B_v A_v x` (rank 4,
    A Kaiming-uniform a=sqrt(5), B zero, scaling 1, no dropout; 12 x 12,288 = 147,456 parameters on ViT-B), through
    peft as one rank-8 LoRA whose B is held block-diagonal (`adapters.add_lora(parts="qv")`). The rest of the encoder
    is frozen; prompt encoder, decoder and MEA train, as in the official optimiser.
    """

    def __init__(self, sam: Sam3D, *, lora_rank: int = 4, adapter: MaskEnhancedAdapter | None = None,
                 click_radius: float = 0.0, detail: bool = False) -> None:
        super().__init__()
        self.sam = sam
        self.click_radius = click_radius  # [A] > 0: clicks are also painted into the mask prompt (clicks.paint_clicks)
        # [A] a stride-4 branch reading the volume and the round's mask prompt (sam3d.detail); None = the paper
        self.detail = None
        if detail:
            self.detail = DetailEncoder3D(sam.mask_decoder.transformer_dim // 8,
                                          stride=sam.volume_size // self.low_res_size)
        if lora_rank > 0:  # 0: no adapters (a from-scratch encoder trains whole)
            add_lora(sam.image_encoder, rank=lora_rank, targets=("qkv",), parts="qv")
        self.mea = adapter if adapter is not None else MaskEnhancedAdapter()

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution logits cube: 4x the embedding grid (volume_size / 4 with 16³ patches)."""
        return 4 * self.sam.prompt_encoder.image_embedding_size[0]

    def embed(self, volumes: torch.Tensor) -> torch.Tensor:
        """E_I (B, 384, 8, 8, 8) of z-normalised (B, 1, 128, 128, 128) volumes, through the LoRA-tuned encoder."""
        return self.sam.embed_volumes(volumes)

    def embed_details(self, volumes: torch.Tensor) -> torch.Tensor | None:
        """Stride-4 volume features of the [A] detail branch (None without it), once per volume like `embed`."""
        return None if self.detail is None else self.detail.encode(volumes)

    def refine(
        self,
        image_embeddings: torch.Tensor,
        click_coords: torch.Tensor,
        click_labels: torch.Tensor,
        previous_low_res_logits: torch.Tensor | None = None,
        volume_details: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One interaction round -> low-res logits (B, 1, 32, 32, 32) and predicted IoU (B, 1).

        `click_coords` (B, P, 3) voxel indices (d0, d1, d2), `click_labels` (B, P) 1 positive / 0 negative (M-SAM feeds
        only the newest click, P = 1); `previous_low_res_logits` (B, 1, 32, 32, 32), None meaning zeros as in the
        official first round (a zero mask prompt, not the no-mask embedding). With `click_radius` > 0 ([A], not in
        M-SAM) the click is also painted into that mask prompt. `volume_details` are `embed_details(volumes)`, which
        the detail branch needs.
        """
        if previous_low_res_logits is None:
            size = self.low_res_size
            previous_low_res_logits = image_embeddings.new_zeros(click_coords.shape[0], 1, size, size, size)
        if self.click_radius > 0:
            previous_low_res_logits = paint_clicks(previous_low_res_logits, click_coords, click_labels,
                                                   volume_size=self.sam.volume_size, radius=self.click_radius)
        details = None
        if self.detail is not None:
            if volume_details is None:
                raise ValueError("this M-SAM has a detail branch: pass volume_details=embed_details(volumes)")
            details = self.detail(volume_details, previous_low_res_logits)
        return self.sam.decode(
            image_embeddings,
            points=(click_coords, click_labels),
            mask_inputs=previous_low_res_logits,
            fuse=self.mea,
            details=details,
        )

    def forward(
        self,
        volumes: torch.Tensor,
        click_coords: torch.Tensor,
        click_labels: torch.Tensor,
        previous_low_res_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`embed` then one `refine` round (for a single round; loops should embed once and refine many times)."""
        return self.refine(self.embed(volumes), click_coords, click_labels, previous_low_res_logits,
                           self.embed_details(volumes))


def build_msam(
    *, sam_checkpoint: str | os.PathLike | None = None, pretrained: bool = False, lora_rank: int = 4
) -> MSam:
    """M-SAM on SAM-Med3D, loading the SAM-Med3D weights (`sam_med3d_turbo.pth`) before LoRA is injected.

    `sam_checkpoint` is the SAM-Med3D file; `pretrained=True` finds it in the checkpoint folders. LoRA and the MEA
    start from their own initialisation, as in the official training.
    """
    sam = build_sam3d("sam_med3d", checkpoint=sam_checkpoint, pretrained=pretrained)
    return MSam(sam, lora_rank=lora_rank)
