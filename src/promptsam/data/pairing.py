"""Pair prediction files with ground-truth files by stem.

Accepted names on both sides: ``<stem>.labels.tif``, ``<stem>.tif``, ``<stem>.png``, ``<stem>.nii.gz``
(and ``.tiff``/``.nii``). Class maps may be named ``<stem>.classes.tif`` or ``<stem>.tif``; a tagged
name (``.labels``/``.classes``) wins over a plain one, so labels and classes may share one folder.
Hidden files (such as the temporary files of atomic writes) and other file types (JSON, CSV) are ignored.
A ground-truth folder in the uniform layout (a split folder with ``labels/`` inside) resolves to its
``labels/`` and, if present, ``classes/`` folders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from promptsam.errors import InputError

__all__ = ["Pair", "index_folder", "pair_files", "resolve_gt_dir"]

_BASE_EXTS = (".tif", ".tiff", ".png", ".nii.gz", ".nii")
_LABEL_TAG = ".labels"
_CLASS_TAG = ".classes"


@dataclass(frozen=True)
class Pair:
    """One matched case: its stem, ground-truth path and prediction path (plus class maps if any)."""

    name: str
    gt: Path
    pred: Path
    gt_classes: Path | None = None
    pred_classes: Path | None = None


def _split_name(name: str) -> tuple[str, str] | None:
    """Return (stem including any .labels/.classes tag, extension) or None if not a label file."""
    lower = name.lower()
    for ext in sorted(_BASE_EXTS, key=len, reverse=True):
        if lower.endswith(ext):
            return name[: -len(ext)], ext
    return None


def index_folder(folder: str | os.PathLike, *, kind: str = "labels") -> dict[str, Path]:
    """Map stem -> file for the label (`kind="labels"`) or class (`kind="classes"`) maps in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found")
    own, other = (_LABEL_TAG, _CLASS_TAG) if kind == "labels" else (_CLASS_TAG, _LABEL_TAG)
    tagged: dict[str, Path] = {}
    plain: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        parts = _split_name(path.name)
        if parts is None or parts[0].lower().endswith(other):
            continue
        stem, table = parts[0], plain
        if stem.lower().endswith(own):
            stem, table = stem[: -len(own)], tagged
        if stem in table:
            raise InputError(f"{folder}: two files for {stem!r}: {table[stem].name} and {path.name}")
        table[stem] = path
    return {**plain, **tagged}  # <stem>.labels.tif / <stem>.classes.tif win over a plain <stem>.tif


def resolve_gt_dir(gt_dir: str | os.PathLike) -> tuple[Path, Path | None]:
    """Return (labels folder, classes folder or None) for a plain folder or a uniform-layout split folder."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise InputError(f"{gt_dir}: ground-truth folder not found")
    if (gt_dir / "labels").is_dir():
        classes = gt_dir / "classes"
        return gt_dir / "labels", classes if classes.is_dir() else None
    return gt_dir, None


def pair_files(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    gt_classes_dir: str | os.PathLike | None = None,
    pred_classes_dir: str | os.PathLike | None = None,
    allow_missing: bool = False,
    names: Sequence[str] | None = None,
) -> tuple[list[Pair], list[str]]:
    """Match predictions to ground truth by stem; return (pairs sorted by name, skipped-file notes).

    Without `allow_missing`, a ground-truth file with no prediction (or the reverse) is an InputError
    naming it; with it, such files are skipped and listed in the notes. `names` restricts both sides
    to those stems (e.g. a validation split); a name without ground truth is an error.
    """
    labels_dir, auto_classes = resolve_gt_dir(gt_dir)
    gt = index_folder(labels_dir)
    pred = index_folder(pred_dir)
    if not gt:
        raise InputError(f"{labels_dir}: no ground-truth label files found")
    if names is not None:
        for name in names:
            if name not in gt:
                raise InputError(f"{labels_dir}: no ground-truth file for {name!r}")
        gt = {k: gt[k] for k in names}
        pred = {k: v for k, v in pred.items() if k in gt}
    notes: list[str] = []
    for stem in sorted(gt.keys() - pred.keys()):
        if not allow_missing:
            raise InputError(f"{gt[stem]}: no prediction for it in {pred_dir}")
        notes.append(f"skipped {gt[stem]}: no prediction")
    for stem in sorted(pred.keys() - gt.keys()):
        if not allow_missing:
            raise InputError(f"{pred[stem]}: no ground truth for it in {labels_dir}")
        notes.append(f"skipped {pred[stem]}: no ground truth")
    common = sorted(gt.keys() & pred.keys())
    if not common:
        raise InputError(f"{pred_dir}: no prediction matches a ground-truth file in {labels_dir}")

    gt_cls_dir = Path(gt_classes_dir) if gt_classes_dir is not None else auto_classes
    gt_cls = index_folder(gt_cls_dir, kind="classes") if gt_cls_dir is not None and pred_classes_dir else {}
    pred_cls = index_folder(pred_classes_dir, kind="classes") if pred_classes_dir is not None else {}
    if pred_classes_dir is not None and gt_cls_dir is None:
        raise InputError(f"{pred_classes_dir}: predicted classes given but no ground-truth class maps")
    pairs = []
    for stem in common:
        gc, pc = gt_cls.get(stem), pred_cls.get(stem)
        if pred_classes_dir is not None and (gc is None) != (pc is None):
            missing = f"{gt[stem]}: no ground-truth class map"
            if pc is None:
                missing = f"{pred[stem]}: no predicted class map"
            if not allow_missing:
                raise InputError(f"{missing} for {stem!r}")
            notes.append(f"class metrics skipped for {stem!r}: {missing.split(': ', 1)[1]}")
            gc = pc = None
        pairs.append(Pair(stem, gt[stem], pred[stem], gc, pc))
    return pairs, notes
