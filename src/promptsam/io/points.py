"""Nucleus points made elsewhere, as prompts for SAM: CSV tables, QuPath point annotations and label images.

A points file gives one (x, y) pixel position per nucleus (column, row of the image; 0-based, pixel centres at
integers), so that SAM draws each one instead of the prompter finding them: detections of another tool, points
clicked in QuPath, or the instances of a label image (seeding from Cellpose, StarDist or a corrected mask).

- CSV: columns `x`, `y` or `centroid_x`, `centroid_y` (promptsam's own `<stem>.csv`), an optional `class` column
  (a type name or id), any others ignored.
- GeoJSON: Point and MultiPoint features (QuPath: Objects > Export as GeoJSON of point annotations), in QuPath's
  pixel-edge coordinates (a pixel's centre at +0.5, as promptsam's own GeoJSON), moved onto pixel centres; the
  feature's QuPath classification name is the points' type.
- Label image (TIFF/PNG, 0 = background): one point per instance, at its centroid (or its innermost pixel when the
  centroid falls outside it), as the segmentor was trained (`data.targets.nucleus_points`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from promptsam.errors import InputError
from promptsam.io.geojson import feature_class, read_geojson
from promptsam.io.images import read_labels

__all__ = ["POINT_SUFFIXES", "find_points_file", "read_points", "read_prompts"]

TABLE_SUFFIXES = (".csv",)
GEOJSON_SUFFIXES = (".geojson", ".json")
LABEL_IMAGE_SUFFIXES = (".labels.tif", ".tif", ".tiff", ".png")
POINT_SUFFIXES = TABLE_SUFFIXES + GEOJSON_SUFFIXES + LABEL_IMAGE_SUFFIXES
COLUMN_PAIRS = (("x", "y"), ("centroid_x", "centroid_y"))


def read_points(path: str | os.PathLike, *, shape: tuple[int, int] | None = None) -> np.ndarray:
    """(N, 2) float32 (x, y) nucleus points of a CSV, GeoJSON or label image; with `shape` (H, W) every point must
    lie on that image."""
    return _read_typed(path, shape=shape)[0]


def read_prompts(path: str | os.PathLike, *, shape: tuple[int, int] | None = None,
                 class_names: tuple[str, ...] | list[str] = ()) -> tuple[np.ndarray, np.ndarray | None]:
    """`read_points` and, for a model with several nucleus types (`class_names`), each point's class id 1..K from
    the file's types (by name, any case, or id; 0 = unclassified); None when the file or the model has no types."""
    points, types = _read_typed(path, shape=shape)
    if types is None or len(class_names) < 2:
        return points, None
    return points, _class_ids(types, class_names, source=path)


def _read_typed(path: str | os.PathLike, *, shape: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, list[str] | None]:
    """Points and each point's type as written in the file ("" where none), or None when the file has none."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: points file not found")
    name = path.name.lower()
    types: list[str] | None = None
    if name.endswith(TABLE_SUFFIXES):
        points, types = _read_table(path)
    elif name.endswith(GEOJSON_SUFFIXES):
        points, types = _read_geojson_points(path)
    elif name.endswith(LABEL_IMAGE_SUFFIXES):
        from promptsam.data.targets import nucleus_points

        labels = read_labels(path)
        if labels.ndim != 2:
            raise InputError(f"{path}: a label image of points must be 2D, got shape {labels.shape}")
        points = nucleus_points(labels)[0]
    else:
        raise InputError(f"{path}: unknown points format (expected one of {', '.join(POINT_SUFFIXES)})")
    if len(points) == 0:
        raise InputError(f"{path}: no points")
    if not np.isfinite(points).all():
        raise InputError(f"{path}: point {int(np.flatnonzero(~np.isfinite(points).all(1))[0]) + 1} is not a number")
    if shape is not None:
        h, w = shape
        outside = (points[:, 0] < -0.5) | (points[:, 0] > w - 0.5) | (points[:, 1] < -0.5) | (points[:, 1] > h - 0.5)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise InputError(f"{path}: point {i + 1} (x={points[i, 0]:g}, y={points[i, 1]:g}) lies outside the "
                             f"{w}x{h} image")
    return points, (types if types is not None and any(types) else None)


def _class_ids(types: list[str], class_names: tuple[str, ...] | list[str], *, source: str | os.PathLike
               ) -> np.ndarray:
    """(N,) class ids 1..K of point types given by name (any case) or id in `class_names`; "" is 0, unclassified."""
    lookup = {n.lower(): i for i, n in enumerate(class_names, 1)}
    ids = []
    for t in types:
        t = t.strip()
        if not t:
            ids.append(0)
        elif t.lower() in lookup:
            ids.append(lookup[t.lower()])
        elif t.isdigit() and int(t) <= len(class_names):
            ids.append(int(t))
        else:
            raise InputError(f"{source}: point type {t!r} is not one of the model's types ({', '.join(class_names)})")
    return np.array(ids, np.int64)


def find_points_file(folder: str | os.PathLike, stem: str, *, image: str | os.PathLike | None = None) -> Path:
    """The points file of image `stem` in `folder`: `<stem>.csv`, `.geojson`, `.json`, `.labels.tif`, `.tif`,
    `.tiff` or `.png`, the first that exists and is not the `image` file itself."""
    folder = Path(folder)
    for suffix in POINT_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file() and not (image is not None and candidate.resolve() == Path(image).resolve()):
            return candidate
    raise InputError(f"{folder}: no points file for {stem} ({stem}{', '.join(POINT_SUFFIXES)})")


def _read_table(path: Path) -> np.ndarray:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable CSV ({type(err).__name__})") from None
    if not rows:
        raise InputError(f"{path}: empty CSV")
    header = [h.strip().lower() for h in rows[0]]
    pair = next((p for p in COLUMN_PAIRS if set(p) <= set(header)), None)
    if pair is None:
        raise InputError(f"{path}: no x,y or centroid_x,centroid_y columns (header: {','.join(rows[0])})")
    ix, iy = header.index(pair[0]), header.index(pair[1])
    ic = header.index("class") if "class" in header else None
    points, types = [], []
    for line, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            points.append((float(row[ix]), float(row[iy])))
        except (IndexError, ValueError):
            raise InputError(f"{path}: line {line} has no number in {pair[0]} or {pair[1]}") from None
        kind = row[ic].strip() if ic is not None and ic < len(row) else ""
        types.append("" if kind == "0" else kind)  # promptsam's own CSV writes 0 for an unclassified nucleus
    return np.array(points, np.float32).reshape(-1, 2), (types if ic is not None else None)


def _read_geojson_points(path: Path) -> tuple[np.ndarray, list[str]]:
    points, types = [], []
    for i, feature in enumerate(read_geojson(path), 1):
        geometry = feature.get("geometry") or {}
        kind = geometry.get("type")
        if kind not in ("Point", "MultiPoint"):
            raise InputError(f"{path}: feature {i} is a {kind}; a points file holds Point or MultiPoint features "
                             "(outlines: convert them to a label image with `promptsam data convert geojson`)")
        coords = [geometry.get("coordinates")] if kind == "Point" else geometry.get("coordinates")
        try:
            found = [(float(c[0]) - 0.5, float(c[1]) - 0.5) for c in coords]  # pixel edges -> pixel centres
        except (IndexError, TypeError, ValueError):
            raise InputError(f"{path}: feature {i} has bad {kind} coordinates") from None
        points += found
        types += [feature_class(feature) or ""] * len(found)
    return np.array(points, np.float32).reshape(-1, 2), types
