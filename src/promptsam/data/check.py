"""Integrity check of a dataset folder, in the spirit of nnU-Net's `verify_dataset_integrity`.

Problems (non-zero exit): unreadable files, an image without label or a label without image, image and
label shapes that differ, non-integer or negative labels, NaN/inf in images, a class map whose shape
differs, that labels background, leaves an instance unlabelled or gives one instance two classes, and
3D image/label affines that differ.
Warnings: label ids that are not 1..N (valid, but not the canonical form of the uniform layout), empty
label maps (valid for negative tiles), labels stored as float, and class maps without instances.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from promptsam.data.layout import Sample, find_split_dirs, list_samples, split_dir
from promptsam.errors import InputError

__all__ = ["CheckReport", "Finding", "check_dataset", "check_sample"]


@dataclass(frozen=True)
class Finding:
    """One finding: severity ("problem" or "warning"), the file or case it concerns, and a message."""

    severity: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper():8s} {self.where}: {self.message}"


@dataclass
class CheckReport:
    """All findings for a folder plus the number of cases checked."""

    root: Path
    n_cases: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        """Findings that make the data unusable as is."""
        return [f for f in self.findings if f.severity == "problem"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings worth a look that do not block use."""
        return [f for f in self.findings if f.severity == "warning"]

    def format(self) -> str:
        """Return the human-readable report."""
        lines = [str(f) for f in self.findings]
        lines.append(
            f"checked {self.n_cases} case(s) under {self.root}: "
            f"{len(self.problems)} problem(s), {len(self.warnings)} warning(s)"
        )
        return "\n".join(lines)


def _raw_dtype(path: Path) -> np.dtype | None:
    """Return the stored dtype of a TIFF label file without converting it (NIfTI: see the Volume header)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                return tf.pages[0].dtype
    except Exception:
        return None
    return None


def check_sample(sample: Sample) -> list[Finding]:
    """Check one case and return its findings."""
    from promptsam.io import is_volume_path, read_image, read_label, read_labels, read_volume
    from promptsam.io.volumes import AFFINE_TOL

    out: list[Finding] = []

    def problem(where: Path | str, msg: str) -> None:
        out.append(Finding("problem", str(where), msg))

    def warning(where: Path | str, msg: str) -> None:
        out.append(Finding("warning", str(where), msg))

    if sample.image is None:
        problem(sample.label or sample.classes or sample.name, "no image file for this case")
        return out
    if sample.label is None:
        problem(sample.image, "no label file for this case")
        return out

    image_volume = None
    try:
        if sample.is_3d:  # the reader refuses NaN/inf voxels, bad affines and non-3D arrays
            image_volume = read_volume(sample.image)
            image_shape = image_volume.shape
        else:
            image_shape = read_image(sample.image).shape[:2]
    except InputError as err:
        problem(sample.image, str(err).removeprefix(f"{sample.image}: "))
        return out

    label_volume = None
    try:
        if is_volume_path(sample.label):
            label_volume = read_label(sample.label, binary=False, required=False)
            label = label_volume.array
        else:
            label = read_labels(sample.label)
    except InputError as err:
        problem(sample.label, str(err).removeprefix(f"{sample.label}: "))
        return out
    raw = label_volume.header.get_data_dtype() if label_volume is not None else _raw_dtype(sample.label)
    if raw is not None and not np.issubdtype(raw, np.integer):
        warning(sample.label, f"labels stored as {raw}; store an integer dtype")
    if label.shape != tuple(image_shape):
        problem(sample.label, f"label shape {label.shape} does not match image shape {tuple(image_shape)}")
        return out
    if image_volume is not None and label_volume is not None:
        diff = float(np.max(np.abs(image_volume.affine - label_volume.affine)))
        if diff > AFFINE_TOL:
            problem(sample.label, f"affine differs from the image affine by up to {diff:.3g} mm")

    ids = np.unique(label)
    ids = ids[ids != 0]
    if ids.size == 0:
        warning(sample.label, "label map is empty (no foreground)")
    elif not np.array_equal(ids, np.arange(1, ids.size + 1)):
        warning(sample.label, f"label ids are not sequential 1..{ids.size} (max id {int(ids[-1])})")

    if sample.classes is not None:
        try:
            classes = read_labels(sample.classes)
        except InputError as err:
            problem(sample.classes, str(err).removeprefix(f"{sample.classes}: "))
            return out
        if classes.shape != label.shape:
            problem(sample.classes, f"class map shape {classes.shape} does not match labels {label.shape}")
            return out
        out.extend(_check_classes(sample.classes, label, classes))
    return out


def _check_classes(where: Path, label: np.ndarray, classes: np.ndarray) -> list[Finding]:
    """Check that the class map paints exactly the instances, one class per instance."""
    out: list[Finding] = []
    fg = label > 0
    n_bg = int(np.count_nonzero(classes[~fg]))
    if n_bg:
        out.append(Finding("problem", str(where), f"{n_bg} background pixel(s) have a class"))
    if not fg.any():
        if classes.any():
            out.append(Finding("warning", str(where), "class map is non-empty but there are no instances"))
        return out
    inst, cls = label[fg].astype(np.int64), classes[fg].astype(np.int64)
    n_unclassed = int(np.count_nonzero(cls == 0))
    if n_unclassed:
        out.append(Finding("problem", str(where), f"{n_unclassed} instance pixel(s) have class 0"))
    # an instance is consistent when its min and max class agree
    size = int(inst.max()) + 1
    lo = np.full(size, np.iinfo(np.int64).max)
    hi = np.full(size, -1)
    np.minimum.at(lo, inst, cls)
    np.maximum.at(hi, inst, cls)
    mixed = np.flatnonzero((hi >= 0) & (lo != hi))
    if mixed.size:
        msg = f"{mixed.size} instance(s) have more than one class (e.g. id {mixed[0]})"
        out.append(Finding("problem", str(where), msg))
    return out


def check_dataset(root: str | os.PathLike) -> CheckReport:
    """Check every split folder under `root` (a data root, a dataset, a split or an nnU-Net folder)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    report = CheckReport(root)
    folders = find_split_dirs(root)
    if not folders:
        raise InputError(f"{root}: no 'images/' or nnU-Net 'imagesTr/' folder found")
    for folder in folders:
        splits = ["train", "test"] if (folder / "imagesTr").is_dir() else ["train"]
        for split in splits:
            try:
                split_dir(folder, split)
            except InputError:
                continue
            try:
                samples = list_samples(folder, split, complete=False)
            except InputError as err:
                report.findings.append(Finding("problem", str(folder), str(err)))
                continue
            if not samples:
                report.findings.append(Finding("problem", str(folder), "no images found"))
            for sample in samples:
                report.n_cases += 1
                report.findings.extend(check_sample(sample))
    return report
