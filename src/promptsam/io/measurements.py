"""Per-instance measurements of a 2D label map (regionprops-style rows) and their CSV export.

Conventions
- Coordinates are pixels of the array (plus `offset`): x = column, y = row; bbox x2/y2 are exclusive.
- `classes` and `scores` are per-pixel maps of the label map's shape (class: majority of the non-zero class ids
  under the instance, 0 if none; score: mean under the instance), a mapping {instance id: value}, or a 1-D lookup
  table indexed by instance id (`table[labels]` style, length > max id).
- Rows are plain Python numbers; a missing score is NaN, a missing class is 0.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from promptsam.io.atomic import atomic_path

__all__ = ["MEASUREMENT_COLUMNS", "measure_instances", "measurement_columns", "write_csv"]

MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "id",
    "centroid_x",
    "centroid_y",
    "area",
    "bbox_x1",
    "bbox_y1",
    "bbox_x2",
    "bbox_y2",
    "perimeter",
    "eccentricity",
    "solidity",
    "class",
    "score",
)
_DECIMALS = 4


def measurement_columns(*, spacing: float | Sequence[float] | None = None, channels: int = 0) -> tuple[str, ...]:
    """Column names `measure_instances` produces for these options (stable header for empty outputs)."""
    cols = list(MEASUREMENT_COLUMNS)
    if spacing is not None:
        cols.insert(cols.index("area") + 1, "area_um2")
    cols += [f"mean_intensity_{c}" for c in range(channels)]
    return tuple(cols)


def check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Return `labels` as a 2D non-negative integer array or raise ValueError."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D label map, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise ValueError(f"{name} has negative ids; instance ids must be >= 0 (0 = background)")
    return arr


def check_offset(offset: Sequence[float]) -> tuple[float, float]:
    """Return `offset` as an (x, y) pair of ints (when integral) or floats, or raise ValueError."""
    vals = tuple(offset)
    if len(vals) != 2 or not all(isinstance(v, int | float | np.integer | np.floating) for v in vals):
        raise ValueError(f"offset must be (x, y), got {offset!r}")
    if not all(math.isfinite(float(v)) for v in vals):
        raise ValueError(f"offset must be finite, got {offset!r}")
    out = tuple(int(v) if float(v).is_integer() else float(v) for v in vals)
    return out[0], out[1]


def instance_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted non-zero ids present in `labels` (int64)."""
    ids = np.unique(labels)
    return ids[ids != 0].astype(np.int64)


def _index_of(labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices of foreground pixels, position of each pixel's id in `ids`)."""
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    return fg, np.searchsorted(ids, flat[fg])


def per_instance(
    values: np.ndarray | Mapping[int, float] | Sequence[float] | None,
    labels: np.ndarray,
    ids: np.ndarray,
    *,
    kind: str,
    default: float,
) -> np.ndarray:
    """Per-id values (aligned with `ids`) from a pixel map, {id: value} mapping or id-indexed lookup table."""
    name = "classes" if kind == "class" else "scores"
    if values is None:
        return np.full(ids.size, default, np.float64 if kind == "score" else np.int64)
    if isinstance(values, Mapping):
        out = np.array([values.get(int(i), default) for i in ids], np.float64)
    else:
        arr = np.asarray(values)
        if arr.shape == labels.shape:
            fg, pos = _index_of(labels, ids)
            if kind == "score":
                vals = arr.ravel()[fg].astype(np.float64)
                total = np.bincount(pos, weights=vals, minlength=ids.size)
                count = np.bincount(pos, minlength=ids.size)
                out = total / np.maximum(count, 1)
            else:
                cls = arr.ravel()[fg]
                if not np.issubdtype(cls.dtype, np.integer) or (cls.size and cls.min() < 0):
                    raise ValueError(f"{name} map must hold non-negative integer class ids, got {arr.dtype}")
                sel = cls != 0
                top = int(cls.max(initial=0)) + 1
                table = np.bincount(pos[sel] * top + cls[sel].astype(np.int64), minlength=ids.size * top)
                table = table.reshape(ids.size, top)
                out = np.where(table.max(axis=1) > 0, table.argmax(axis=1), 0)  # 0 when no classified pixel
        elif arr.ndim == 1:
            if ids.size and arr.size <= ids[-1]:
                raise ValueError(f"{name} lookup table has {arr.size} entries but the largest instance id is {ids[-1]}"
                                 f" (index it by id; entry 0 is background)")
            out = arr[ids] if ids.size else arr[:0]
        else:
            raise ValueError(f"{name} must be a map of shape {labels.shape}, a mapping id -> value or a 1-D lookup"
                             f" table indexed by id, got shape {arr.shape}")
    if kind == "class":
        out = np.asarray(out)
        if out.size and (not np.all(np.isfinite(out.astype(np.float64))) or np.any(out != np.round(out))):
            raise ValueError("classes must be integer class ids")
        return out.astype(np.int64)
    return np.asarray(out, np.float64)


def _region_table(labels: np.ndarray, properties: Iterable[str]) -> dict[str, np.ndarray]:
    """skimage regionprops_table over `labels` (rows sorted by label)."""
    from skimage.measure import regionprops_table

    return regionprops_table(labels, properties=("label", *properties))


def _clean(value: float) -> float:
    """Round a float for output, keeping NaN."""
    return round(float(value), _DECIMALS) if math.isfinite(value) else float(value)


def measure_instances(
    labels: np.ndarray,
    *,
    classes: np.ndarray | Mapping[int, int] | Sequence[int] | None = None,
    scores: np.ndarray | Mapping[int, float] | Sequence[float] | None = None,
    image: np.ndarray | None = None,
    spacing: float | Sequence[float] | None = None,
    offset: Sequence[float] = (0, 0),
) -> list[dict[str, Any]]:
    """One row of measurements per instance id (sorted by id); see module docstring for conventions."""
    labels = check_labels(labels)
    ox, oy = check_offset(offset)
    ids = instance_ids(labels)
    channels = 0
    if image is not None:
        image = np.asarray(image)
        if image.shape[:2] != labels.shape or image.ndim not in (2, 3):
            raise ValueError(f"image shape {image.shape} does not match labels {labels.shape}")
        channels = 1 if image.ndim == 2 else image.shape[2]
    sy = sx = None
    if spacing is not None:
        sp = np.atleast_1d(np.asarray(spacing, np.float64))
        if sp.size not in (1, 2) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ValueError(f"spacing must be one or two (row, col) positive µm/px values, got {spacing!r}")
        sy, sx = float(sp[0]), float(sp[-1])
    if not ids.size:
        return []
    table = _region_table(labels, ("area", "centroid", "bbox", "perimeter", "eccentricity", "solidity"))
    cls = per_instance(classes, labels, ids, kind="class", default=0)
    score = per_instance(scores, labels, ids, kind="score", default=math.nan)
    means = np.zeros((ids.size, channels))
    if channels:
        fg, pos = _index_of(labels, ids)
        pix = image.reshape(-1, channels)[fg].astype(np.float64)
        count = np.maximum(np.bincount(pos, minlength=ids.size), 1)
        for c in range(channels):
            means[:, c] = np.bincount(pos, weights=pix[:, c], minlength=ids.size) / count
    rows: list[dict[str, Any]] = []
    for i, inst in enumerate(ids.tolist()):
        area = int(table["area"][i])
        row: dict[str, Any] = {
            "id": inst,
            "centroid_x": _clean(table["centroid-1"][i] + 0.0 + ox),
            "centroid_y": _clean(table["centroid-0"][i] + 0.0 + oy),
            "area": area,
        }
        if sy is not None:
            row["area_um2"] = _clean(area * sy * sx)
        row |= {
            "bbox_x1": int(table["bbox-1"][i]) + ox,
            "bbox_y1": int(table["bbox-0"][i]) + oy,
            "bbox_x2": int(table["bbox-3"][i]) + ox,
            "bbox_y2": int(table["bbox-2"][i]) + oy,
            "perimeter": _clean(table["perimeter"][i]),
            "eccentricity": _clean(table["eccentricity"][i]),
            "solidity": _clean(table["solidity"][i]),
            "class": int(cls[i]),
            "score": _clean(score[i]),
        }
        for c in range(channels):
            row[f"mean_intensity_{c}"] = _clean(means[i, c])
        rows.append(row)
    return rows


def write_csv(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
) -> Path:
    """Write rows (streamed from any iterable) as CSV atomically; header = `columns`, else the first row's keys,
    else MEASUREMENT_COLUMNS."""
    path = Path(path)
    rows = iter(rows)
    first = next(rows, None)
    header = list(columns) if columns is not None else list(first.keys()) if first else list(MEASUREMENT_COLUMNS)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="raise", lineterminator="\n")
        writer.writeheader()
        if first is not None:
            writer.writerow(first)
        for row in rows:
            writer.writerow(row)
    return path
