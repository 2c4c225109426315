"""Models: SAM 2D (ViT-B/L/H, MobileSAM), SAM-Med3D and M-SAM, their registry and checkpoint loading."""

from promptsam.models.checkpoint import load_checkpoint, read_state_dict
from promptsam.models.mea import MaskEnhancedAdapter
from promptsam.models.msam import MSam, build_msam
from promptsam.models.registry import find_checkpoint, list_models, register_model
from promptsam.models.sam.build import build_sam
from promptsam.models.sam.sam import Sam
from promptsam.models.sam3d.build import build_sam3d
from promptsam.models.sam3d.sam3d import Sam3D

__all__ = [
    "MSam",
    "MaskEnhancedAdapter",
    "Sam",
    "Sam3D",
    "build_msam",
    "build_sam",
    "build_sam3d",
    "find_checkpoint",
    "list_models",
    "load_checkpoint",
    "read_state_dict",
    "register_model",
]
