"""3D lesion data: image/label pairs on disk and the SAM-Med3D / M-SAM preprocessing protocol (methods.md §2).

Folders
- promptsam's uniform layout (what ../shared/data uses): ``<dataset>/<split>/images/<case>.nii.gz`` with
  ``<dataset>/<split>/labels/<case>.nii.gz``;
- nnU-Net raw folders: ``imagesTr/<case>_0000.nii.gz`` with ``labelsTr/<case>.nii.gz``; a ``dataset.json``
  beside them gives the modality (``channel_names`` in v2, ``modality`` in v1) and, for Medical Segmentation
  Decathlon style folders, the ``training`` list of image/label paths.
`list_volume_cases(..., subset="train" | "val")` applies the frozen validation split of promptsam.data.splits.

Protocol (arrays in, arrays out; every step is also a MONAI dictionary transform, see `sam_med3d_transforms`)
1. orientation is **kept as stored in the file** (no RAS reorientation): the model sees the file's voxel order,
   and outputs are written back in that order with the input affine;
2. resample to 1.5 mm isotropic (MONAI ``Spacingd``: bilinear image, nearest label; direction cosines and the
   first voxel's centre are kept);
3. CT only: clamp intensities to [-1000, 1000] (M-SAM's loader; `modality="CT"`);
4. crop-or-pad to 128³ around an ROI centre: the GT label's bounding-box centre in evaluation mode (SAM-Med3D
   and M-SAM do this at train *and* test time, which flatters them), or any centre given in original voxel
   coordinates (e.g. a detector's component centre in automatic mode). Like torchio's ``CropOrPad(mask_name=)``
   the centre stays at the patch centre and missing voxels are zero-padded (no shifting into the volume). The
   crop position (`Crop`) is returned so a prediction can be pasted back;
5. z-score with statistics over the voxels > 0 of the patch, applied to **every** voxel (torchio's
   ``ZNormalization(masking_method=x > 0)``, what SAM-Med3D's weights were trained with; MONAI's
   ``NormalizeIntensityd(nonzero=True)`` would instead leave background at 0 and count negative voxels);
6. training only: random flips along each of the three axes with probability 0.5 (``RandFlipd``).
`restore` is the inverse: paste a 128³ prediction into the resampled grid and resample it back onto the original
grid and affine. `sliding_window_predict` runs any predictor over a whole volume in 128³ windows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptsam.data.layout import Sample, list_samples
from promptsam.data.splits import VAL
from promptsam.errors import InputError

__all__ = [
    "Crop",
    "CropOrPadd",
    "Roi",
    "ZNormalizePositived",
    "crop_or_pad",
    "dataset_modality",
    "list_volume_cases",
    "normalize_intensity",
    "paste",
    "preprocess",
    "read_dataset_json",
    "resample",
    "resample_to",
    "restore",
    "roi_center",
    "sam_med3d_transforms",
    "sliding_window_predict",
]

SPACING = 1.5  # mm, SAM-Med3D's isotropic grid
SIZE = 128  # voxels per side of the model input
CT_RANGE = (-1000.0, 1000.0)


# ----------------------------------------------------------------------------------------------------------- folders
def read_dataset_json(root: str | os.PathLike) -> dict | None:
    """Return the parsed ``dataset.json`` in `root` (nnU-Net / MSD), or None when there is none."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable dataset.json ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: dataset.json is not a JSON object")
    return data


def dataset_modality(root: str | os.PathLike, *, default: str = "MR") -> str:
    """Return "CT" when dataset.json names channel 0 as CT, else the channel's name, else `default`."""
    data = read_dataset_json(root) or {}
    channels = data.get("channel_names") or data.get("modality") or {}
    name = str(channels.get("0", "")) if isinstance(channels, dict) else ""
    if not name:
        return default
    return "CT" if name.strip().upper() == "CT" else name


def _msd_cases(root: Path, entries: list) -> list[Sample]:
    """Samples from a dataset.json ``training`` list (MSD / nnU-Net v1); a missing image falls back to _0000."""
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InputError(f"{root / 'dataset.json'}: a 'training' entry lacks 'image' or 'label'")
        image, label = root / entry["image"], root / entry["label"]
        if not image.is_file():
            name = image.name.removesuffix(".nii.gz").removesuffix(".nii")
            alt = image.with_name(name + "_0000" + image.name[len(name):])
            image = alt if alt.is_file() else image
        for path in (image, label):
            if not path.is_file():
                raise InputError(f"{path}: listed in {root / 'dataset.json'} but not found")
        out.append(Sample(label.name.removesuffix(".nii.gz").removesuffix(".nii"), image, label))
    return sorted(out, key=lambda s: s.name)


def list_volume_cases(
    root: str | os.PathLike, split: str = "train", *, subset: str | None = None, dataset: str | None = None
) -> list[Sample]:
    """List the 3D image/label pairs of a uniform-layout or nnU-Net folder, optionally one side of the frozen split.

    `subset` None keeps every case; "train" or "val" keeps that side of `promptsam.data.splits.VAL` for `dataset`
    (default: the folder's name, or its parent's when `root` is the split folder).
    """
    root = Path(root)
    meta = read_dataset_json(root) if root.is_dir() else None
    if meta and isinstance(meta.get("training"), list) and not (root / split / "images").is_dir() and split == "train":
        samples = _msd_cases(root, meta["training"])
    else:
        samples = list_samples(root, split)
    flat = [s for s in samples if not s.is_3d]
    if flat:
        raise InputError(f"{flat[0].image}: not a NIfTI volume; 3D cases need .nii or .nii.gz files")
    if subset is None:
        return samples
    if subset not in ("train", "val"):
        raise InputError(f"subset must be 'train', 'val' or None, got {subset!r}")
    name = dataset or (root.parent.name if (root / "images").is_dir() else root.name)
    if name not in VAL:
        raise InputError(f"{root}: no frozen split for dataset {name!r}; pass dataset= or subset=None")
    val = set(VAL[name])
    return [s for s in samples if (s.name in val) == (subset == "val")]


# ------------------------------------------------------------------------------------------------------ crop / paste
@dataclass(frozen=True)
class Crop:
    """Where a patch sits in its source array: `start` (may be negative = padded) and `size` per axis."""

    start: tuple[int, ...]
    size: tuple[int, ...]
    source_shape: tuple[int, ...]

    def slices(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """Return (source slices, patch slices) of the overlap between the patch and its source array."""
        src, dst = [], []
        for start, size, dim in zip(self.start, self.size, self.source_shape, strict=True):
            lo, hi = max(start, 0), min(start + size, dim)
            hi = max(hi, lo)
            src.append(slice(lo, hi))
            dst.append(slice(lo - start, hi - start))
        return tuple(src), tuple(dst)


def roi_center(mask: np.ndarray) -> tuple[float, ...]:
    """Centre of the foreground's bounding box in voxel coordinates (voxel i's centre is at i)."""
    fg = np.asarray(mask) != 0
    if not fg.any():
        raise ValueError("roi_center: the mask is empty")
    out = []
    for axis in range(fg.ndim):
        hits = np.flatnonzero(fg.any(axis=tuple(a for a in range(fg.ndim) if a != axis)))
        out.append((hits[0] + hits[-1]) / 2.0)
    return tuple(float(c) for c in out)


def _as_size(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    return (int(size),) * ndim if np.ndim(size) == 0 else tuple(int(s) for s in size)  # type: ignore[union-attr]


def crop_or_pad(
    array: np.ndarray, center: Sequence[float], *, size: int | Sequence[int] = SIZE, fill: float = 0
) -> tuple[np.ndarray, Crop]:
    """Cut a `size` patch whose centre voxel is `center` (voxel coords), zero-padding outside; return (patch, Crop).

    As torchio's CropOrPad: for an even size the voxel nearest to `center` lands at index size//2.
    """
    array = np.asarray(array)
    shape = _as_size(size, array.ndim)
    if len(center) != array.ndim:
        raise ValueError(f"center needs {array.ndim} coordinates, got {len(center)}")
    start = tuple(int(math.floor(c + 0.5)) - s // 2 for c, s in zip(center, shape, strict=True))
    crop = Crop(start, shape, tuple(array.shape))
    patch = np.full(shape, fill, dtype=array.dtype)
    src, dst = crop.slices()
    patch[dst] = array[src]
    return patch, crop


def paste(patch: np.ndarray, crop: Crop, *, fill: float = 0) -> np.ndarray:
    """Put `patch` back where `crop` cut it from, in an array of the source shape filled with `fill`."""
    patch = np.asarray(patch)
    if tuple(patch.shape) != tuple(crop.size):
        raise ValueError(f"patch shape {patch.shape} does not match the crop size {crop.size}")
    out = np.full(crop.source_shape, fill, dtype=patch.dtype)
    src, dst = crop.slices()
    out[src] = patch[dst]
    return out


# ------------------------------------------------------------------------------------------ resampling / intensity
def _meta(array: np.ndarray, affine: np.ndarray):
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(np.asarray(array))[None], affine=torch.as_tensor(np.asarray(affine, np.float64)))


def resample(
    array: np.ndarray, affine: np.ndarray, *, spacing: float | Sequence[float] = SPACING, mode: str = "bilinear"
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a 3D array to `spacing` mm (MONAI Spacing, orientation kept); return (array, new affine)."""
    from monai.transforms import Spacing

    src = np.asarray(array)
    pixdim = tuple(float(s) for s in np.broadcast_to(spacing, (3,)))
    out = Spacing(pixdim=pixdim, mode=mode, padding_mode="border" if mode != "nearest" else "zeros")(
        _meta(src.astype(np.float32, copy=False), affine)
    )
    arr = out[0].numpy()
    arr = np.round(arr).astype(src.dtype) if mode == "nearest" else arr.astype(np.float32, copy=False)
    return arr, np.asarray(out.affine, dtype=np.float64)


def resample_to(
    array: np.ndarray, affine: np.ndarray, *, target_affine: np.ndarray, target_shape: Sequence[int], mode: str
) -> np.ndarray:
    """Resample a 3D array from its `affine` grid onto the grid (`target_affine`, `target_shape`)."""
    from monai.transforms import SpatialResample

    src = np.asarray(array)
    target_shape = tuple(int(s) for s in target_shape)
    if src.shape == target_shape and np.allclose(affine, target_affine, atol=1e-6):
        return src.copy()
    out = SpatialResample(mode=mode, padding_mode="zeros")(
        _meta(src.astype(np.float32, copy=False), affine),
        dst_affine=torch.as_tensor(np.asarray(target_affine, np.float64)),
        spatial_size=target_shape,
    )
    arr = out[0].numpy()
    return np.round(arr).astype(src.dtype) if mode == "nearest" else arr.astype(np.float32, copy=False)


def _znorm_positive(image: np.ndarray) -> np.ndarray:
    """(image - mean) / std with mean and std (unbiased) over voxels > 0, applied to all voxels."""
    image = np.asarray(image, dtype=np.float32)
    values = image[image > 0].astype(np.float64)
    if values.size < 2:
        return image - (float(values.mean()) if values.size else 0.0)
    std = float(values.std(ddof=1))
    return ((image - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def normalize_intensity(image: np.ndarray, *, modality: str = "MR") -> np.ndarray:
    """SAM-Med3D intensity protocol: CT clamp to [-1000, 1000], then z-score over voxels > 0 (applied to all)."""
    image = np.asarray(image, dtype=np.float32)
    if modality.upper() == "CT":
        image = np.clip(image, *CT_RANGE)
    return _znorm_positive(image)


# ------------------------------------------------------------------------------------------ MONAI dict transforms
class CropOrPadd:
    """Dict transform: crop-or-pad `keys` to `size` around d["center"] (original voxel coords) or the label's bbox.

    Works on channel-first arrays; the current grid's affine comes from d[key].affine (MetaTensor) or d["affine"],
    and a given centre is mapped from d["original_affine"] through world coordinates. Writes d["crop"] (a `Crop`
    on the current grid). A plain callable, so it composes with MONAI's Compose.
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        *,
        size: int | Sequence[int] = SIZE,
        label_key: str = "label",
        center_key: str = "center",
    ) -> None:
        self.keys, self.size, self.label_key, self.center_key = tuple(keys), size, label_key, center_key

    def _center(self, d: Mapping) -> tuple[float, ...]:
        if d.get(self.center_key) is not None:
            center = np.asarray(d[self.center_key], dtype=np.float64)
            ref = d[next(k for k in self.keys if k in d)]
            current = np.asarray(getattr(ref, "affine", d.get("affine")), dtype=np.float64)
            world = np.asarray(d.get("original_affine", current), np.float64) @ np.append(center, 1.0)
            return tuple(float(c) for c in (np.linalg.inv(current) @ world)[:3])
        if d.get(self.label_key) is None:
            raise ValueError("CropOrPadd needs d['center'] or a label to centre the crop on")
        return roi_center(np.asarray(d[self.label_key])[0])

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        center = self._center(d)
        crop = None
        for key in self.keys:
            if d.get(key) is None:
                continue
            patches = [crop_or_pad(channel, center, size=self.size) for channel in np.asarray(d[key])]
            d[key] = np.stack([p for p, _ in patches])
            crop = patches[0][1]
        d["crop"] = crop
        return d


class ZNormalizePositived:
    """Dict transform: `normalize_intensity` per channel (CT clamp when modality is CT; z-score over voxels > 0)."""

    def __init__(self, keys: Sequence[Hashable], *, modality: str = "MR") -> None:
        self.keys, self.modality = tuple(keys), modality

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.keys:
            d[key] = np.stack([normalize_intensity(np.asarray(c), modality=self.modality) for c in np.asarray(d[key])])
        return d


def _remember_geometry(d: Mapping) -> dict:
    """Dict step: store the input grid (affine, spatial shape) as d["original_affine"], d["original_shape"]."""
    d = dict(d)
    image = d["image"]
    d["original_affine"] = np.asarray(getattr(image, "affine", d.get("affine")), dtype=np.float64)
    d["original_shape"] = tuple(int(s) for s in image.shape[1:])
    return d


def _record_grid(d: Mapping) -> dict:
    """Dict step: store the resampled grid as d["grid_affine"], d["grid_shape"]."""
    d = dict(d)
    d["grid_affine"] = np.asarray(d["image"].affine, dtype=np.float64)
    d["grid_shape"] = tuple(int(s) for s in d["image"].shape[1:])
    return d


def sam_med3d_transforms(
    *,
    modality: str = "MR",
    spacing: float = SPACING,
    size: int = SIZE,
    train: bool = False,
    seed: int | None = None,
) -> Callable[[dict], dict]:
    """MONAI Compose over {"image", "label"?, "center"?}: channel-first MetaTensors with affines -> 128³ patches.

    Steps as in the module docstring; adds "crop", "original_affine"/"original_shape", "grid_affine"/"grid_shape"
    to the dict. `train` appends the three random flips (seeded by `seed`).
    """
    from monai.transforms import Compose, Lambda, RandFlipd, Spacingd

    steps: list = [
        Lambda(_remember_geometry),
        Spacingd(
            ["image", "label"],
            pixdim=(spacing,) * 3,
            mode=("bilinear", "nearest"),
            padding_mode=("border", "zeros"),
            allow_missing_keys=True,
        ),
        Lambda(_record_grid),
        CropOrPadd(["image", "label"], size=size),
        ZNormalizePositived(["image"], modality=modality),
    ]
    if train:
        steps += [RandFlipd(["image", "label"], prob=0.5, spatial_axis=a, allow_missing_keys=True) for a in range(3)]
    compose = Compose(steps)
    if seed is not None:
        compose.set_random_state(seed=seed)
    return compose


@dataclass(frozen=True, eq=False)
class Roi:
    """Geometry of one 128³ model input: the crop on the resampled grid, that grid, and the original grid."""

    crop: Crop
    grid_affine: np.ndarray
    grid_shape: tuple[int, int, int]
    affine: np.ndarray
    shape: tuple[int, int, int]


def preprocess(
    image: np.ndarray,
    affine: np.ndarray,
    *,
    label: np.ndarray | None = None,
    center: Sequence[float] | None = None,
    modality: str = "MR",
    spacing: float = SPACING,
    size: int = SIZE,
) -> dict[str, Any]:
    """SAM-Med3D protocol on one volume: {"image": (S,S,S) float32, "label": (S,S,S) uint8 | None, "roi": Roi}.

    `center` (original voxel coordinates) places the crop; without it the label's bounding-box centre on the
    resampled grid is used (evaluation mode, as SAM-Med3D / M-SAM).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"preprocess expects a 3D volume, got shape {image.shape}")
    if label is None and center is None:
        raise ValueError("preprocess needs a label (evaluation mode) or a centre (automatic mode)")
    d: dict[str, Any] = {"image": _meta(image.astype(np.float32, copy=False), affine)}
    if label is not None:
        if np.shape(label) != image.shape:
            raise ValueError(f"label shape {np.shape(label)} does not match image shape {image.shape}")
        d["label"] = _meta((np.asarray(label) != 0).astype(np.float32), affine)
    if center is not None:
        d["center"] = tuple(float(c) for c in center)
    out = sam_med3d_transforms(modality=modality, spacing=spacing, size=size)(d)
    roi = Roi(out["crop"], out["grid_affine"], out["grid_shape"], out["original_affine"], out["original_shape"])
    lab = out.get("label")
    return {
        "image": np.asarray(out["image"][0], dtype=np.float32),
        "label": None if lab is None else (np.asarray(lab[0]) > 0.5).astype(np.uint8),
        "roi": roi,
    }


def restore(patch: np.ndarray, roi: Roi, *, mode: str = "bilinear", fill: float = 0) -> np.ndarray:
    """Paste a model-input-sized prediction back and resample it onto the original grid (shape and affine of the input).

    Use `mode="bilinear"` for probabilities or soft masks (threshold the result at 0.5 for a mask; smoother
    than nearest when going back from 1.5 mm to a finer grid) and `mode="nearest"` for label maps.
    """
    patch = np.asarray(patch)
    grid = paste(patch if mode == "nearest" else patch.astype(np.float32), roi.crop, fill=fill)
    return resample_to(grid, roi.grid_affine, target_affine=roi.affine, target_shape=roi.shape, mode=mode)


# ---------------------------------------------------------------------------------------------------- sliding window
def sliding_window_predict(
    volume: np.ndarray,
    predictor: Callable[[torch.Tensor], Any],
    *,
    roi_size: int | Sequence[int] = SIZE,
    overlap: float = 0.5,
    mode: str = "gaussian",
    batch_size: int = 1,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Run `predictor` ((B,1,*roi) tensor -> (B,C,*roi) tensor or array) over a whole 3D volume in windows.

    MONAI `sliding_window_inference` with `overlap` and gaussian blending; volumes smaller than a window are
    zero-padded. Returns (D,H,W) float32 when the predictor gives one channel, else (C,D,H,W).
    """
    from monai.inferers import sliding_window_inference

    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"sliding_window_predict expects a 3D volume, got shape {volume.shape}")

    def run(batch: torch.Tensor) -> torch.Tensor:
        out = predictor(batch)
        return torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out, device=batch.device)

    with torch.no_grad():
        out = sliding_window_inference(
            torch.from_numpy(volume)[None, None].to(device or "cpu"),
            roi_size=_as_size(roi_size, 3),
            sw_batch_size=batch_size,
            predictor=run,
            overlap=overlap,
            mode=mode,
        )
    out = out[0].float().cpu().numpy()
    return out[0] if out.shape[0] == 1 else out
