"""Read and write 3D NIfTI volumes with their geometry; every failure is a one-line InputError naming the file.

`read_volume` returns a `Volume`: the voxel array (D, H, W) in the file's own voxel order (no reorientation),
the 4x4 voxel-to-world affine, the voxel spacing in mm (column norms of the affine) and the nibabel header,
so `write_volume(path, array, like=volume)` writes an output with the input's affine and header geometry
(qform/sform codes, units). A 4D file with a singleton last axis is squeezed to 3D; anything else that is not
3D is refused. Labels are read with `read_label` (integer array, optionally required non-empty and binary)
and checked against their image with `check_pair` (same shape, affines equal within `AFFINE_TOL` mm).

This is the package's only NIfTI reader/writer (re-exported as `promptsam.io.read_volume` etc.): the 3D
pipeline, the dataset checker, `NucleusDataset`, evaluation and `promptsam.io.read_labels` all go through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptsam.errors import InputError
from promptsam.io.atomic import atomic_path

__all__ = ["AFFINE_TOL", "Volume", "check_pair", "read_label", "read_pair", "read_volume", "write_volume"]

AFFINE_TOL = 1e-3  # mm: affines of an image/label pair may differ by float noise only


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D volume: array (D, H, W) in file voxel order, 4x4 affine (voxel -> world mm), spacing (mm), source."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    path: Path | None = None
    header: Any = None  # nibabel.Nifti1Header of the source file (None for volumes built in memory)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (D, H, W)."""
        return tuple(self.array.shape)  # type: ignore[return-value]


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm: the lengths of the affine's first three columns."""
    return tuple(float(s) for s in np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0)))


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """Load (raw array, affine, header) of a NIfTI file, squeezing trailing singleton axes beyond the third."""
    import nibabel as nib

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    if not _is_nifti(path):
        raise InputError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise InputError(f"{path}: not a NIfTI file ({type(img).__name__})")
        arr = np.asarray(img.dataobj)
    except InputError:
        raise
    except Exception as err:  # nibabel and gzip raise many types
        raise InputError(f"{path}: unreadable NIfTI ({_one_line(err)})") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim < 3:
        raise InputError(f"{path}: {arr.ndim}D image of shape {arr.shape}; expected a 3D volume")
    if arr.ndim > 3:
        raise InputError(
            f"{path}: {arr.ndim}D volume of shape {arr.shape} with {arr.shape[3]} channels; expected one 3D volume"
        )
    if arr.size == 0:
        raise InputError(f"{path}: volume has no voxels (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating) or arr.dtype == bool):
        raise InputError(f"{path}: unsupported voxel type {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputError(f"{path}: volume contains {bad} NaN or infinite voxel(s)")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: invalid (singular or non-finite) affine")
    return arr, affine, img.header


def read_volume(path: str | os.PathLike, *, dtype: np.dtype | type = np.float32) -> Volume:
    """Read a 3D NIfTI image as a Volume (array cast to `dtype`, default float32), validating shape and values."""
    path = Path(path)
    arr, affine, header = _load(path)
    return Volume(np.ascontiguousarray(arr, dtype=dtype), affine, spacing_of(affine), path, header)


def _label_values(arr: np.ndarray, limit: int = 6) -> str:
    values = np.unique(arr)
    shown = ", ".join(f"{v:g}" for v in values[:limit].tolist())
    return shown + (", ..." if values.size > limit else "")


def read_label(path: str | os.PathLike, *, binary: bool = True, required: bool = True) -> Volume:
    """Read a 3D NIfTI label as a Volume of non-negative integers (uint8 if binary); optionally non-empty."""
    path = Path(path)
    arr, affine, header = _load(path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
        raise InputError(f"{path}: label has non-integer values ({_label_values(arr)}); expected integer labels")
    if arr.min() < 0:
        raise InputError(f"{path}: label has negative values ({_label_values(arr)})")
    top = float(arr.max())
    if binary and top > 1:
        raise InputError(f"{path}: label is not binary (values {_label_values(arr)}); expected 0 and 1")
    if required and top == 0:
        raise InputError(f"{path}: label is empty (no foreground voxel)")
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32
    return Volume(np.ascontiguousarray(arr, dtype=dtype), affine, spacing_of(affine), path, header)


def check_pair(image: Volume, label: Volume, *, atol: float = AFFINE_TOL) -> None:
    """Raise an InputError naming the label file unless it has the image's shape and affine (within `atol` mm)."""
    where = label.path or "label"
    if image.shape != label.shape:
        raise InputError(f"{where}: label shape {label.shape} does not match image shape {image.shape} ({image.path})")
    diff = float(np.max(np.abs(image.affine - label.affine)))
    if diff > atol:
        raise InputError(f"{where}: label affine differs from the image affine by up to {diff:.3g} mm ({image.path})")


def read_pair(
    image: str | os.PathLike, label: str | os.PathLike, *, binary: bool = True, required: bool = True
) -> tuple[Volume, Volume]:
    """Read an image and its label volume and check they share shape and affine; return (image, label)."""
    vol = read_volume(image)
    lab = read_label(label, binary=binary, required=required)
    check_pair(vol, lab)
    return vol, lab


def _storable(path: Path, array: np.ndarray) -> np.ndarray:
    """Return `array` in a dtype NIfTI stores portably (bool -> uint8, 64-bit ints narrowed when they fit)."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype in (np.int64, np.uint64):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for cand in (np.uint8, np.int16, np.uint16, np.int32):
            info = np.iinfo(cand)
            if info.min <= lo and hi <= info.max:
                return array.astype(cand)
        raise InputError(f"{path}: integer values {lo}..{hi} do not fit in int32")
    if np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32 and array.dtype != np.float64:
        return array.astype(np.float32)
    return array


def write_volume(path: str | os.PathLike, array: np.ndarray, like: Volume | np.ndarray) -> Path:
    """Write a 3D array as NIfTI with the affine and header geometry of `like` (Volume or 4x4 affine), atomically."""
    import nibabel as nib

    path = Path(path)
    if not _is_nifti(path):
        raise InputError(f"{path}: volumes are written as .nii.gz or .nii")
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"{path}: expected a 3D array to write, got shape {array.shape}")
    header = None
    if isinstance(like, Volume):
        if like.shape != array.shape:
            raise InputError(f"{path}: array shape {array.shape} does not match the reference volume {like.shape}")
        affine, header = like.affine, like.header
    else:
        affine = np.asarray(like, dtype=np.float64)
        if affine.shape != (4, 4):
            raise InputError(f"{path}: affine must be 4x4, got {affine.shape}")
    array = _storable(path, array)
    if header is not None:
        header = header.copy()
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(1.0, 0.0)  # store the values as given, never the source's scaling
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(array, affine, header=header)
        img.set_qform(affine, code=int(header["qform_code"]) or 1)
        img.set_sform(affine, code=int(header["sform_code"]) or 1)
    else:
        img = nib.Nifti1Image(array, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
