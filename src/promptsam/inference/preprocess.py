"""Bring any 2D image to SAM's input: 3-channel float on the 0-255 scale, longest side resized, padded."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from promptsam.errors import InputError


def to_rgb255(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """(H, W) or (H, W, 1|3) image of any dtype -> (H, W, 3) float32 on the 0-255 scale.

    uint8 is kept as is; any other dtype (uint16 microscopy, float) is rescaled from its 0.1-99.9 percentile
    range to 0-255, since SAM was trained on 8-bit photographs.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise InputError(f"{name}: expected a grey or RGB 2D image, got shape {image.shape}")
    if min(image.shape[:2]) < 2:
        raise InputError(f"{name}: image of {image.shape[0]}x{image.shape[1]} pixels is too small to segment")
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        raise InputError(f"{name}: unsupported pixel type {image.dtype}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise InputError(f"{name}: image contains NaN or infinite values")
    lo, hi = np.percentile(image, (0.1, 99.9))
    if hi <= lo:
        return np.zeros_like(image)
    return (np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.float32)


def resized_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(h, w) after scaling so the longest side is `long_side` (rounded as the official transform does)."""
    h, w = shape
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side(image: torch.Tensor, long_side: int) -> torch.Tensor:
    """Resize (B, C, H, W) so its longest side is `long_side` (bilinear, antialiased)."""
    size = resized_shape(tuple(image.shape[-2:]), long_side)
    if size == tuple(image.shape[-2:]):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def zoom_image(image: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, C) float image resized by `scale` (bilinear; antialiased when shrinking), float32."""
    if scale == 1:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    return x[0].permute(1, 2, 0).contiguous().numpy()
