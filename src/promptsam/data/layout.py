"""Find image/label pairs in the uniform layout or an nnU-Net raw folder, and wrap them as a torch Dataset.

Uniform layout (what ../shared/data uses)::

    <root>/<split>/images/<name>.png | <name>.nii.gz
    <root>/<split>/labels/<name>.tif | <name>.nii.gz
    <root>/<split>/classes/<name>.tif            (optional per-pixel class map)

nnU-Net raw layout: ``<root>/imagesTr/<case>_0000.nii.gz`` with ``<root>/labelsTr/<case>.nii.gz``
(``imagesTs``/``labelsTs`` for ``split="test"``); only the first channel (``_0000``) is used.
`root` may also be the split folder itself (the one holding ``images/``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from promptsam.errors import InputError

__all__ = ["NucleusDataset", "Sample", "find_split_dirs", "list_samples", "split_dir", "stem_of"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii.gz", ".nii")
LABEL_EXTS = (".tif", ".tiff", ".png", ".nii.gz", ".nii")
_NNUNET_SPLITS = {"train": "Tr", "test": "Ts"}


@dataclass(frozen=True)
class Sample:
    """One case: its name and the paths of its image, instance labels and optional class map."""

    name: str
    image: Path | None
    label: Path | None
    classes: Path | None = None

    @property
    def is_3d(self) -> bool:
        """True when the image (or label) is a NIfTI volume."""
        path = self.image or self.label
        return path is not None and path.name.lower().endswith((".nii", ".nii.gz"))


def stem_of(path: str | os.PathLike, exts: tuple[str, ...] = IMAGE_EXTS + LABEL_EXTS) -> str | None:
    """Return the file name without its (possibly double) extension, or None if not recognised."""
    name = Path(path).name
    lower = name.lower()
    for ext in sorted(set(exts), key=len, reverse=True):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


def _index(folder: Path, exts: tuple[str, ...], *, strip: str = "") -> dict[str, Path]:
    """Map stem -> path for the files in `folder`; two files with one stem are an error."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem = stem_of(path, exts)
        if stem is None:
            continue
        if strip:
            if not stem.endswith(strip):
                continue
            stem = stem[: -len(strip)]
        if stem in out:
            raise InputError(f"{folder}: two files for case {stem!r}: {out[stem].name} and {path.name}")
        out[stem] = path
    return out


def split_dir(root: str | os.PathLike, split: str = "train") -> tuple[Path, Path, Path | None, str]:
    """Resolve (images dir, labels dir, classes dir or None, image-name suffix) for `root`/`split`."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: data folder not found")
    for base in (root / split, root):
        if (base / "images").is_dir():
            classes = base / "classes"
            return base / "images", base / "labels", classes if classes.is_dir() else None, ""
    tag = _NNUNET_SPLITS.get(split)
    if tag and (root / f"images{tag}").is_dir():
        return root / f"images{tag}", root / f"labels{tag}", None, "_0000"
    raise InputError(f"{root}: no '{split}/images', 'images' or nnU-Net 'imagesTr' folder inside")


def list_samples(root: str | os.PathLike, split: str = "train", *, complete: bool = True) -> list[Sample]:
    """List the cases under `root` sorted by name; with `complete`, an image without label is an error."""
    images_dir, labels_dir, classes_dir, chan = split_dir(root, split)
    images = _index(images_dir, IMAGE_EXTS, strip=chan)
    labels = _index(labels_dir, LABEL_EXTS)
    classes = _index(classes_dir, LABEL_EXTS) if classes_dir else {}
    if complete:
        for name in sorted(images.keys() - labels.keys()):
            raise InputError(f"{images[name]}: no label file for it in {labels_dir}")
        for name in sorted(labels.keys() - images.keys()):
            raise InputError(f"{labels[name]}: no image file for it in {images_dir}")
        if not images:
            raise InputError(f"{images_dir}: no images found")
    names = sorted(images.keys() | labels.keys() | (classes.keys() if not complete else set()))
    return [Sample(n, images.get(n), labels.get(n), classes.get(n)) for n in names]


def find_split_dirs(root: str | os.PathLike, *, max_depth: int = 3) -> list[Path]:
    """Return every folder under `root` (itself included) that holds `images/` or nnU-Net `imagesTr/`."""
    root = Path(root)
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if (folder / "images").is_dir() or (folder / "imagesTr").is_dir():
            found.append(folder)
            return
        if depth >= max_depth:
            return
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            walk(child, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return found


def _to_rgb_uint8(image: np.ndarray, name: str) -> np.ndarray:
    """HxWx3 uint8 image, converted exactly as inference converts it (promptsam.inference.preprocess.to_rgb255)."""
    from promptsam.inference.preprocess import to_rgb255

    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return image
    return np.round(to_rgb255(image, name=name)).astype(np.uint8)


class NucleusDataset(Dataset):
    """Torch-style dataset of samples as MONAI-like dicts {image, label, classes, name}.

    2D images come back as HxWx3 uint8 arrays and label maps as integer HxW arrays (classes is None
    when the case has no class map); 3D cases return the volume as a float32 (D, H, W) array in file voxel
    order plus its 4x4 "affine" and "spacing" (mm), read by `promptsam.io.volumes.read_volume`.
    `transform` is a callable over that dict (e.g. a composed list of dict transforms).
    """

    def __init__(self, samples: list[Sample], transform: Callable[[dict], Any] | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        from promptsam.io import read_image, read_labels, read_volume

        sample = self.samples[index]
        if sample.image is None:
            raise InputError(f"case {sample.name!r} has no image file")
        item: dict[str, Any] = {"name": sample.name}
        if sample.is_3d:
            volume = read_volume(sample.image)
            item.update(image=volume.array, affine=volume.affine, spacing=volume.spacing)
        else:
            item["image"] = _to_rgb_uint8(read_image(sample.image), str(sample.image))
        item["label"] = read_labels(sample.label) if sample.label is not None else None
        item["classes"] = read_labels(sample.classes) if sample.classes is not None else None
        return self.transform(item) if self.transform is not None else item
