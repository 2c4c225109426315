"""Models: SAM 2D (ViT-B/L/H, MobileSAM), their registry and checkpoint loading."""

from promptsam.models.checkpoint import load_checkpoint, read_state_dict
from promptsam.models.registry import find_checkpoint, list_models, register_model
from promptsam.models.sam.build import build_sam
from promptsam.models.sam.sam import Sam

__all__ = [
    "Sam",
    "build_sam",
    "find_checkpoint",
    "list_models",
    "load_checkpoint",
    "read_state_dict",
    "register_model",
]
