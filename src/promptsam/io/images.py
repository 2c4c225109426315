"""Read and write 2D images and label maps; every failure is an InputError naming the file.

Conventions
- `read_image` returns HxW (grey) or HxWx3 (RGB); uint8, uint16 and float dtypes are kept as stored.
- `read_labels` returns an integer array (HxW or DxHxW / XxYxZ for NIfTI), 0 = background.
- `write_labels` writes a zlib-compressed TIFF, **uint16 when the largest id fits (<= 65535), else
  uint32**: the smallest lossless choice, and what the uniform layout in ../shared/data uses.
- NIfTI volumes (`.nii`, `.nii.gz`) are read and written by `promptsam.io.volumes` (`read_volume` -> `Volume`,
  `read_label`, `write_volume`); `read_labels` delegates NIfTI label maps to `read_label`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from promptsam.errors import InputError
from promptsam.io.atomic import atomic_path
from promptsam.io.volumes import read_label  # volumes.py never imports this module: no import cycle

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "TIFF_SUFFIXES",
    "is_volume_path",
    "read_image",
    "read_labels",
    "write_labels",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".btf", ".tf8")
LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".nii", ".nii.gz")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")  # .btf / .tf8: BigTIFF


def _suffix(path: Path) -> str:
    """Return the lower-case suffix, treating `.nii.gz` as one suffix."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_volume_path(path: str | os.PathLike) -> bool:
    """Return True for NIfTI files (`.nii`, `.nii.gz`)."""
    return _suffix(Path(path)) in (".nii", ".nii.gz")


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")


def _load_raster(path: Path) -> np.ndarray:
    """Load a PNG/JPEG/BMP/TIFF into a numpy array without interpreting channels."""
    suffix = _suffix(path)
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            return np.asarray(tifffile.imread(path))
        if suffix in _PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode == "P":  # palette: expand to what it displays
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("L" if im.mode == "1" else "RGB")
                return np.asarray(im)
    except InputError:
        raise
    except Exception as err:  # decoder errors come in many types
        raise InputError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None
    raise InputError(f"{path}: unsupported image format {suffix!r} (use PNG, JPEG, BMP or TIFF)")


def _drop_opaque_alpha(path: Path, arr: np.ndarray) -> np.ndarray:
    """Drop the last channel if it is a fully opaque alpha channel, else raise."""
    alpha = arr[..., -1]
    if np.issubdtype(arr.dtype, np.integer):
        opaque = np.iinfo(arr.dtype).max
        ok = bool(np.all(alpha == opaque))
    else:
        top = float(np.max(alpha))
        ok = top in (1.0, 255.0) and bool(np.all(alpha == top))
    if not ok:
        raise InputError(f"{path}: image has a non-opaque alpha channel; flatten it to RGB first")
    return arr[..., :-1]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/JPEG/TIFF image as HxW or HxWx3, keeping uint8/uint16/float dtypes."""
    path = Path(path)
    _check_exists(path)
    arr = _load_raster(path)
    if arr.size == 0:
        raise InputError(f"{path}: image has no pixels")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{path}: unsupported pixel type {arr.dtype}")
    # TIFFs are sometimes stored channel-first (C, H, W)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and min(arr.shape[1:]) > 4:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # grey+alpha or RGBA
        arr = _drop_opaque_alpha(path, arr)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] != 3:
        raise InputError(f"{path}: unsupported channel count {arr.shape[-1]} (expected 1, 3 or 4)")
    if arr.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2D image, got array of shape {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise InputError(f"{path}: image is too small ({arr.shape[0]}x{arr.shape[1]} pixels)")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: image contains NaN or infinite values")
    return arr


def _as_integer_labels(path: Path, arr: np.ndarray) -> np.ndarray:
    """Return `arr` as a non-negative integer label array or raise an InputError."""
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{path}: label map contains NaN or infinite values")
        if not np.all(arr == np.round(arr)):
            raise InputError(f"{path}: label map has non-integer values (dtype {arr.dtype})")
        top = float(arr.max()) if arr.size else 0.0
        arr = arr.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{path}: unsupported label dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise InputError(f"{path}: label map has negative ids")
    return arr


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label map (TIFF/PNG or NIfTI) as a non-negative integer array."""
    path = Path(path)
    _check_exists(path)
    if is_volume_path(path):
        return read_label(path, binary=False, required=False).array
    arr = _load_raster(path)
    arr = np.squeeze(arr) if arr.ndim > 2 and 1 in arr.shape else arr
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and _suffix(path) in _PIL_SUFFIXES:
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise InputError(f"{path}: colour label image; expected a single-channel label map")
        arr = rgb[..., 0]
    if arr.size == 0:
        raise InputError(f"{path}: label map has no pixels")
    if arr.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2D or 3D label map, got shape {arr.shape}")
    return _as_integer_labels(path, arr)


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an integer label map as a zlib TIFF (uint16 if max id <= 65535, else uint32), atomically."""
    import tifffile

    path = Path(path)
    if _suffix(path) not in TIFF_SUFFIXES:
        raise InputError(f"{path}: label maps are written as .tif (got {path.name!r})")
    labels = _as_integer_labels(path, np.asarray(labels))
    top = int(labels.max()) if labels.size else 0
    if top > np.iinfo(np.uint32).max:
        raise InputError(f"{path}: label id {top} does not fit in uint32")
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype, copy=False), compression="zlib")
    return path
