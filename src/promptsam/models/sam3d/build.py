"""Builder of SAM-Med3D (`sam_med3d`, alias `vit_b_ori` as the official registry calls it), registered by name."""

from __future__ import annotations

import os

import promptsam.models.sam.build  # noqa: F401  (the 2D models register first and stay first in list_models)
from promptsam.errors import CheckpointError
from promptsam.models.registry import get_entry, register_model, with_weights
from promptsam.models.sam3d.image_encoder import ImageEncoderViT3D
from promptsam.models.sam3d.mask_decoder import MaskDecoder3D
from promptsam.models.sam3d.prompt_encoder import PromptEncoder3D
from promptsam.models.sam3d.sam3d import Sam3D

SAM3D_NAMES = ("sam_med3d", "vit_b_ori")
ALL_SAM3D = (*SAM3D_NAMES, "sam_med3d_small")
PROMPT_EMBED_DIM = 384
VOLUME_SIZE = 128
PATCH_SIZE = 16


def build_sam3d(
    name: str = "sam_med3d", *, checkpoint: str | os.PathLike | None = None, pretrained: bool = False
) -> Sam3D:
    """Build a registered 3D SAM (`sam_med3d` / `vit_b_ori`), optionally loading weights strictly by official key names.

    `checkpoint` is a path to an official (`{"model_state_dict": ...}`) or raw state_dict; `pretrained=True` looks the
    official `sam_med3d_turbo.pth` up in the checkpoint folders instead.
    """
    entry = get_entry(name)
    if name not in ALL_SAM3D:
        raise CheckpointError(f"{name!r} is not a 3D model; 3D models: {', '.join(ALL_SAM3D)}")
    return with_weights(entry.builder(), name, checkpoint=checkpoint, pretrained=pretrained)


def _build_sam3d(*, embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...],
                 prompt_dim: int = PROMPT_EMBED_DIM) -> Sam3D:
    """A SAM-Med3D of the given encoder and prompt sizes on 128³ volumes (sizes are data, as in segment-anything)."""
    grid = VOLUME_SIZE // PATCH_SIZE
    return Sam3D(
        image_encoder=ImageEncoderViT3D(
            img_size=VOLUME_SIZE,
            patch_size=PATCH_SIZE,
            in_chans=1,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            global_attn_indexes=global_attn_indexes,
            window_size=14,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder3D(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid, grid),
            input_image_size=(VOLUME_SIZE, VOLUME_SIZE, VOLUME_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder3D(transformer_dim=prompt_dim),
    )


def sam_med3d() -> Sam3D:
    """SAM-Med3D ViT-B on 128³ volumes: 12-block 3D ViT encoder, 384-channel prompt encoder and mask decoder."""
    return _build_sam3d(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))


def sam_med3d_small() -> Sam3D:
    """promptsam's CPU size of SAM-Med3D (our choice, no official weights): 4 blocks of 192, 192-channel prompts."""
    return _build_sam3d(embed_dim=192, depth=4, num_heads=6, global_attn_indexes=(1, 3), prompt_dim=192)


for _name in SAM3D_NAMES:
    register_model(
        _name,
        description="SAM-Med3D ViT-B, 128³ volumes (100.5 M)",
        checkpoint_file="sam_med3d_turbo.pth",
        source="https://huggingface.co/blueyo0/SAM-Med3D",
        licence="Apache-2.0",
    )(sam_med3d)

register_model("sam_med3d_small", description="SAM-Med3D architecture at CPU size (4x192 encoder), from scratch")(
    sam_med3d_small
)
