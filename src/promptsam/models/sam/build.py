"""Builders of the SAM family (ViT-B/L/H and MobileSAM's TinyViT), registered by name."""

from __future__ import annotations

import os

from torch import nn

from promptsam.errors import CheckpointError
from promptsam.models.registry import get_entry, register_model, with_weights
from promptsam.models.sam.image_encoder import ImageEncoderViT
from promptsam.models.sam.mask_decoder import MaskDecoder
from promptsam.models.sam.prompt_encoder import PromptEncoder
from promptsam.models.sam.sam import Sam

PROMPT_EMBED_DIM = 256
SAM2D_NAMES = ("vit_b", "vit_l", "vit_h", "vit_t")
SAM_SOURCE = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
SAM_LICENCE = "Apache-2.0"


def build_sam(
    name: str = "vit_b",
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    image_size: int = 1024,
    window_size: int | None = None,
) -> Sam:
    """Build a registered SAM (`vit_b`, `vit_l`, `vit_h`, `vit_t`) at `image_size`, optionally loading weights.

    `checkpoint` is a path to an official (or promptsam-saved) state_dict; `pretrained=True` looks the official file
    up in the checkpoint folders instead. `window_size` overrides the encoder's attention window (ViT only); it
    changes the function the official weights were trained with, so it is an option, never the default.
    """
    if image_size % 64:
        raise ValueError(f"image_size must be a multiple of 64, got {image_size}")
    entry = get_entry(name)
    if name not in SAM2D_NAMES:
        raise CheckpointError(f"{name!r} is not a 2D SAM; 2D models: {', '.join(SAM2D_NAMES)} (3D: build_sam3d)")
    kwargs = {"window_size": window_size} if window_size is not None else {}
    model = entry.builder(image_size=image_size, **kwargs)
    return with_weights(model, name, checkpoint=checkpoint, pretrained=pretrained)


def _sam(image_encoder: nn.Module, image_size: int) -> Sam:
    grid = image_size // 16
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(transformer_dim=PROMPT_EMBED_DIM),
    )


def _vit_sam(
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: tuple[int, ...],
    image_size: int,
    window_size: int = 14,
) -> Sam:
    encoder = ImageEncoderViT(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        global_attn_indexes=global_attn_indexes,
        window_size=window_size,
        out_chans=PROMPT_EMBED_DIM,
    )
    return _sam(encoder, image_size)


@register_model(
    "vit_b",
    description="SAM ViT-B (93.7 M)",
    checkpoint_file="sam_vit_b_01ec64.pth",
    source=SAM_SOURCE,
    licence=SAM_LICENCE,
)
def sam_vit_b(*, image_size: int = 1024, window_size: int = 14) -> Sam:
    """SAM with the ViT-B encoder."""
    return _vit_sam(
        embed_dim=768,
        depth=12,
        num_heads=12,
        global_attn_indexes=(2, 5, 8, 11),
        image_size=image_size,
        window_size=window_size,
    )


@register_model(
    "vit_l",
    description="SAM ViT-L (312.3 M)",
    checkpoint_file="sam_vit_l_0b3195.pth",
    source=SAM_SOURCE,
    licence=SAM_LICENCE,
)
def sam_vit_l(*, image_size: int = 1024, window_size: int = 14) -> Sam:
    """SAM with the ViT-L encoder."""
    return _vit_sam(
        embed_dim=1024,
        depth=24,
        num_heads=16,
        global_attn_indexes=(5, 11, 17, 23),
        image_size=image_size,
        window_size=window_size,
    )


@register_model(
    "vit_h",
    description="SAM ViT-H (641.1 M)",
    checkpoint_file="sam_vit_h_4b8939.pth",
    source=SAM_SOURCE,
    licence=SAM_LICENCE,
)
def sam_vit_h(*, image_size: int = 1024, window_size: int = 14) -> Sam:
    """SAM with the ViT-H encoder."""
    return _vit_sam(
        embed_dim=1280,
        depth=32,
        num_heads=16,
        global_attn_indexes=(7, 15, 23, 31),
        image_size=image_size,
        window_size=window_size,
    )


@register_model(
    "vit_t",
    description="MobileSAM, TinyViT-5M encoder (10.1 M)",
    checkpoint_file="mobile_sam.pt",
    source="https://github.com/ChaoningZhang/MobileSAM",
    licence="Apache-2.0",
)
def sam_vit_t(*, image_size: int = 1024) -> Sam:
    """MobileSAM: SAM's prompt encoder and mask decoder on a TinyViT-5M encoder."""
    from promptsam.models.sam.tiny_vit import tiny_vit_5m

    return _sam(tiny_vit_5m(out_chans=PROMPT_EMBED_DIM), image_size)
