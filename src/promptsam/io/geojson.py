"""QuPath-loadable GeoJSON from a 2D instance label map, and a minimal reader.

Geometry
- Outlines follow **pixel edges** (a pixel is the unit square [x, x+1] x [y, y+1], x = column, y = row), so a
  polygon's area equals the instance's pixel count exactly and a single pixel is a valid unit square. The tracer
  is pure numpy (no shapely/GEOS at run time) and handles all label maps in one pass.
- Coordinates are level-0 pixels of the image plus `offset` = (x, y) of the tile in the slide; never (row, col).
- Rings are closed (first vertex repeated), exteriors counter-clockwise and holes clockwise by the signed-area
  (shoelace) convention of RFC 7946 / shapely `is_ccw` with y as the second coordinate (on screen, where y points
  down, they look mirrored). Only corner vertices are kept.
- Pieces are 4-connected (edge-sharing) pixel groups: pixels of one instance that meet only at a corner become two
  polygons touching at that point, because one polygon cannot pinch to a point. Where an outline touches itself at
  a corner it is split there into an exterior and a hole (or two exteriors), which is valid in OGC/JTS terms.
- An instance with one piece is a Polygon, with several a MultiPolygon (largest piece first, never single-part);
  `largest_piece_only=True` keeps only the largest piece (measurements still describe the whole instance).

Properties follow QuPath 0.4+: `objectType`, `classification {name, color [r, g, b]}` (only for classified
instances), `measurements` {name: number} (non-finite values are left out; JSON has no NaN) and `isLocked`.
`objectType="cell"` also writes `nucleusGeometry` (the same outline: the label map holds nuclei). Each feature has
a deterministic RFC 4122 `id` (uuid5 of label id and level-0 position), which QuPath uses as the object ID.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from promptsam.errors import InputError
from promptsam.io.atomic import atomic_path
from promptsam.io.measurements import (
    _region_table,
    check_labels,
    check_offset,
    instance_ids,
    per_instance,
)

__all__ = [
    "CLASS_PRESETS",
    "CONSEP_CLASS_COLORS",
    "CONSEP_CLASS_NAMES",
    "OBJECT_TYPES",
    "PANNUKE_CLASS_COLORS",
    "PANNUKE_CLASS_NAMES",
    "labels_to_features",
    "read_geojson",
    "write_features",
    "write_geojson",
]

OBJECT_TYPES = ("detection", "cell", "annotation")

# CoNSeP with the HoVer-Net type merge (what `promptsam data convert consep` writes).
CONSEP_CLASS_NAMES: dict[int, str] = {1: "Other", 2: "Inflammatory", 3: "Epithelial", 4: "Spindle-shaped"}
CONSEP_CLASS_COLORS: dict[int, tuple[int, int, int]] = {
    1: (255, 200, 0),
    2: (160, 90, 160),
    3: (200, 0, 0),
    4: (80, 160, 80),
}
# PanNuke channel order (ids 1..5, what `promptsam data convert pannuke` writes).
PANNUKE_CLASS_NAMES: dict[int, str] = {1: "Neoplastic", 2: "Inflammatory", 3: "Connective", 4: "Dead", 5: "Epithelial"}
PANNUKE_CLASS_COLORS: dict[int, tuple[int, int, int]] = {
    1: (200, 0, 0),
    2: (160, 90, 160),
    3: (80, 160, 80),
    4: (60, 60, 60),
    5: (0, 120, 255),
}
CLASS_PRESETS: dict[str, tuple[dict[int, str], dict[int, tuple[int, int, int]]]] = {
    "consep": (CONSEP_CLASS_NAMES, CONSEP_CLASS_COLORS),
    "pannuke": (PANNUKE_CLASS_NAMES, PANNUKE_CLASS_COLORS),
}
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
)  # fmt: skip
_ID_NAMESPACE = uuid.UUID("6f1c1d3e-5b7a-4c1e-9a51-70726f6d7074")
_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.int64)  # edge directions: +x, +y, -x, -y


# ------------------------------------------------------------------------------------------- tracing
def _boundary_edges(labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unit boundary edges of every instance, oriented with the instance on the left: (x, y, dir, label)."""
    pad = np.pad(labels, 1)
    inner = pad[1:-1, 1:-1]
    fg = inner != 0
    neighbours = (pad[:-2, 1:-1], pad[1:-1, 2:], pad[2:, 1:-1], pad[1:-1, :-2])  # up, right, down, left
    start_at = ((0, 0), (1, 0), (1, 1), (0, 1))  # start corner (dx, dy) of the top/right/bottom/left edge
    xs, ys, ds = [], [], []
    for d, (nb, (dx, dy)) in enumerate(zip(neighbours, start_at, strict=True)):
        r, c = np.nonzero(fg & (nb != inner))
        xs.append(c + dx)
        ys.append(r + dy)
        ds.append(np.full(r.size, d, np.int8))
    x, y, d = (np.concatenate(a).astype(np.int64) for a in (xs, ys, ds))
    # the pixel left of the edge holds the label: recover it from the start corner and direction
    px = x - (d == 1) - (d == 2)
    py = y - (d == 2) - (d == 3)
    return x, y, d, labels[py, px]


def _trace(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Closed outlines of all instances: (label per ring, corner vertices (k, 2) per ring, twice signed area)."""
    x, y, d, lab = _boundary_edges(labels)
    n = x.size
    if n == 0:
        return np.zeros(0, np.int64), [], np.zeros(0, np.int64)
    h, w = labels.shape
    _, rank = np.unique(lab, return_inverse=True)
    base = rank.astype(np.int64) * ((h + 1) * (w + 1))
    start = base + y * (w + 1) + x
    end = base + (y + _STEP[d, 1]) * (w + 1) + (x + _STEP[d, 0])
    order = np.lexsort((d, start))
    sorted_start = start[order]
    lo = np.searchsorted(sorted_start, end)
    hi = np.minimum(lo + 1, n - 1)
    first, second = order[lo], order[hi]
    # a corner touched diagonally by two pixels of one label has two exits: turn left, hugging the same pixel
    pinch = (hi != lo) & (sorted_start[hi] == end)
    succ = np.where(pinch & (d[second] == (d + 1) % 4), second, first)

    succ_list = succ.tolist()
    seen = bytearray(n)
    seq: list[int] = []
    starts: list[int] = []
    for e0 in range(n):
        if seen[e0]:
            continue
        starts.append(len(seq))
        e = e0
        while not seen[e]:
            seen[e] = 1
            seq.append(e)
            e = succ_list[e]
    seq_a = np.asarray(seq, np.int64)
    starts_a = np.asarray(starts, np.int64)
    ends_a = np.append(starts_a[1:], n)
    # previous edge within the ring, to keep only vertices where the direction changes
    prev = np.arange(n) - 1
    prev[starts_a] = ends_a - 1
    ring_d = d[seq_a]
    corner = ring_d != ring_d[prev]
    ring_x, ring_y = x[seq_a], y[seq_a]
    cross = ring_x * (y[seq_a] + _STEP[ring_d, 1]) - (x[seq_a] + _STEP[ring_d, 0]) * ring_y
    area2 = np.add.reduceat(cross, starts_a)
    ring_lab = lab[seq_a[starts_a]].astype(np.int64)
    counts = np.add.reduceat(corner.astype(np.int64), starts_a)
    cx, cy = ring_x[corner], ring_y[corner]
    cut = np.cumsum(counts)[:-1]
    verts = np.split(np.stack([cx, cy], axis=1), cut)
    return ring_lab, verts, area2


def _shoelace2(v: np.ndarray) -> int:
    """Twice the signed area of a closed ring given without its repeated last vertex."""
    x, y = v[:, 0], v[:, 1]
    return int(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _split_self_touching(v: np.ndarray) -> list[np.ndarray]:
    """Split a ring that passes through a vertex twice into simple rings."""
    keys = v[:, 0] * (int(v[:, 1].max()) + 2) + v[:, 1]
    if np.unique(keys).size == keys.size:
        return [v]
    loops: list[np.ndarray] = []
    path: list[int] = []
    where: dict[int, int] = {}
    for i, k in enumerate(keys.tolist()):
        j = where.get(k)
        if j is None:
            where[k] = len(path)
            path.append(i)
            continue
        loops.append(v[path[j:]])
        for q in path[j + 1 :]:
            del where[keys[q].item()]
        del path[j + 1 :]
    loops.append(v[path])
    return loops


def _probe(v: np.ndarray) -> tuple[float, float]:
    """Centre of the pixel left of a ring's first edge (inside the instance, never on an outline)."""
    step = np.sign(v[1] - v[0])
    left = np.array([-step[1], step[0]])
    p = v[0] + 0.5 * (step + left)
    return float(p[0]), float(p[1])


def _inside(px: float, py: float, v: np.ndarray) -> bool:
    """Even-odd point-in-ring test (the point is never on an edge: pixel centres vs integer outlines)."""
    x0, y0 = v[:, 0], v[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(crosses & (xi > px)) % 2)


def _assemble(rings: list[np.ndarray], areas: list[int]) -> list[tuple[np.ndarray, list[np.ndarray], int]]:
    """Group one instance's rings into (exterior, holes, twice area) polygons, largest first."""
    loops: list[tuple[np.ndarray, int]] = []
    for ring, a2 in zip(rings, areas, strict=True):
        parts = _split_self_touching(ring)
        loops += [(ring, a2)] if len(parts) == 1 else [(p, _shoelace2(p)) for p in parts]
    shells = sorted(((v, a) for v, a in loops if a > 0), key=lambda s: -s[1])
    holes = [v for v, a in loops if a < 0]
    polys = [(v, [], a) for v, a in shells]
    for hole in holes:
        target = 0
        if len(polys) > 1:  # the smallest exterior around a pixel bordering the hole
            px, py = _probe(hole)
            inside = [i for i, (v, _, _) in enumerate(polys) if _inside(px, py, v)]
            target = min(inside, key=lambda i: polys[i][2]) if inside else 0
        polys[target][1].append(hole)
        polys[target] = (polys[target][0], polys[target][1], polys[target][2] + _shoelace2(hole))
    return sorted(polys, key=lambda p: -p[2])


def _ring_coords(v: np.ndarray, ox: float, oy: float) -> list[list[float]]:
    """Closed GeoJSON ring coordinates with the offset applied."""
    closed = np.concatenate([v, v[:1]])
    if isinstance(ox, int) and isinstance(oy, int):
        return (closed + np.array([ox, oy], np.int64)).tolist()
    return (closed + np.array([ox, oy], np.float64)).tolist()


def _geometry(polys: list[tuple[np.ndarray, list[np.ndarray], int]], ox: float, oy: float) -> dict[str, Any]:
    """GeoJSON Polygon (one piece) or MultiPolygon (several)."""
    parts = [[_ring_coords(shell, ox, oy)] + [_ring_coords(h, ox, oy) for h in holes] for shell, holes, _ in polys]
    if len(parts) == 1:
        return {"type": "Polygon", "coordinates": parts[0]}
    return {"type": "MultiPolygon", "coordinates": parts}


# ---------------------------------------------------------------------------------------- properties
def _class_table(
    class_names: str | Mapping[int, str] | Sequence[str] | None,
    class_colors: Mapping[int, Sequence[int]] | Sequence[Sequence[int]] | None,
) -> tuple[dict[int, str], dict[int, list[int]]]:
    """Resolve names and colours per class id (presets by name, sequences indexed by class id)."""
    if isinstance(class_names, str):
        key = class_names.lower()
        if key not in CLASS_PRESETS:
            raise ValueError(f"unknown class preset {class_names!r}; choose from {', '.join(CLASS_PRESETS)}")
        names, preset_colors = CLASS_PRESETS[key]
        class_colors = preset_colors if class_colors is None else class_colors
    elif class_names is None:
        names = {}
    else:
        names = dict(class_names) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    if class_colors is None:
        colors = {}
    else:
        colors = dict(class_colors) if isinstance(class_colors, Mapping) else dict(enumerate(class_colors))
    out_colors: dict[int, list[int]] = {}
    for k, col in colors.items():
        rgb = [int(c) for c in col]
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"class colour for {k} must be (r, g, b) in 0..255, got {col!r}")
        out_colors[int(k)] = rgb
    return {int(k): str(v) for k, v in names.items()}, out_colors


def _iter_features(
    labels: np.ndarray,
    *,
    classes: np.ndarray | Mapping[int, int] | Sequence[int] | None = None,
    class_names: str | Mapping[int, str] | Sequence[str] | None = None,
    class_colors: Mapping[int, Sequence[int]] | Sequence[Sequence[int]] | None = None,
    scores: np.ndarray | Mapping[int, float] | Sequence[float] | None = None,
    offset: Sequence[float] = (0, 0),
    object_type: str = "detection",
    measurements: bool = True,
    largest_piece_only: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield one GeoJSON Feature per instance (sorted by id); the options are those of labels_to_features."""
    labels = check_labels(labels)
    ox, oy = check_offset(offset)
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {', '.join(OBJECT_TYPES)}, got {object_type!r}")
    names, colors = _class_table(class_names, class_colors)
    ids = instance_ids(labels)
    if not ids.size:
        return
    cls = per_instance(classes, labels, ids, kind="class", default=0) if classes is not None else None
    score = per_instance(scores, labels, ids, kind="score", default=float("nan")) if scores is not None else None
    table = _region_table(labels, ("area", "centroid", "perimeter")) if measurements else None

    ring_lab, verts, area2 = _trace(labels)
    order = np.argsort(ring_lab, kind="stable")
    bounds = np.searchsorted(ring_lab[order], ids, side="left").tolist() + [order.size]
    order_list, area_list = order.tolist(), area2.tolist()
    for i, inst in enumerate(ids.tolist()):
        members = order_list[bounds[i] : bounds[i + 1]]
        polys = _assemble([verts[j] for j in members], [area_list[j] for j in members])
        if largest_piece_only:
            polys = polys[:1]
        geometry = _geometry(polys, ox, oy)
        first = polys[0][0][0]
        fid = uuid.uuid5(_ID_NAMESPACE, f"{inst}:{int(first[0]) + ox}:{int(first[1]) + oy}")
        props: dict[str, Any] = {"objectType": object_type}
        if cls is not None and (int(cls[i]) != 0 or 0 in names):
            c = int(cls[i])
            props["classification"] = {
                "name": names.get(c, f"Class {c}"),
                "color": colors.get(c, list(_PALETTE[(c - 1) % len(_PALETTE)])),
            }
        if table is not None:
            meas = {
                "Label": inst,
                "Area px": float(table["area"][i]),
                "Perimeter px": round(float(table["perimeter"][i]), 4),
                "Centroid X px": round(float(table["centroid-1"][i]) + 0.5 + ox, 4),
                "Centroid Y px": round(float(table["centroid-0"][i]) + 0.5 + oy, 4),
            }
            if score is not None:
                meas["Score"] = round(float(score[i]), 6)
            props["measurements"] = {k: v for k, v in meas.items() if np.isfinite(v)}
        props["isLocked"] = False
        feature: dict[str, Any] = {"type": "Feature", "id": str(fid), "geometry": geometry, "properties": props}
        if object_type == "cell":
            feature["nucleusGeometry"] = geometry
        yield feature


def labels_to_features(
    labels: np.ndarray,
    *,
    classes: np.ndarray | Mapping[int, int] | Sequence[int] | None = None,
    class_names: str | Mapping[int, str] | Sequence[str] | None = None,
    class_colors: Mapping[int, Sequence[int]] | Sequence[Sequence[int]] | None = None,
    scores: np.ndarray | Mapping[int, float] | Sequence[float] | None = None,
    offset: Sequence[float] = (0, 0),
    object_type: str = "detection",
    measurements: bool = True,
    largest_piece_only: bool = False,
) -> list[dict[str, Any]]:
    """GeoJSON Features (one per instance id, sorted) with pixel-edge outlines in level-0 pixels + `offset`.

    `classes`: per-pixel class map (majority under each instance), {id: class} or a lookup table indexed by id;
    class 0 stays unclassified. `class_names`/`class_colors`: {class: value}, sequences indexed by class id, or a
    preset name ("consep", "pannuke") for both. `scores`: per-pixel map (mean), {id: score} or lookup table.
    `offset`: (x, y) of this tile in the level-0 image. Measurements: "Label", "Area px", "Perimeter px"
    (skimage estimate), "Centroid X px"/"Centroid Y px" (pixel-edge coordinates: a pixel's centre is +0.5),
    "Score".
    """
    return list(
        _iter_features(
            labels,
            classes=classes,
            class_names=class_names,
            class_colors=class_colors,
            scores=scores,
            offset=offset,
            object_type=object_type,
            measurements=measurements,
            largest_piece_only=largest_piece_only,
        )
    )


def write_geojson(path: str | os.PathLike, labels: np.ndarray, **options: Any) -> Path:
    """Write the features of `labels` as one FeatureCollection (compact JSON, newline-terminated), atomically.

    Features are streamed to disk one by one; `options` are those of `labels_to_features`.
    """
    return write_features(path, _iter_features(labels, **options))


def write_features(path: str | os.PathLike, features: Iterable[dict[str, Any]]) -> Path:
    """Write GeoJSON Features as one FeatureCollection, streamed one by one (compact JSON), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        fh.write('{"type":"FeatureCollection","features":[')
        for i, feature in enumerate(features):
            if i:
                fh.write(",")
            fh.write(json.dumps(feature, separators=(",", ":"), allow_nan=False))
        fh.write("]}\n")
    return path


def feature_class(feature: dict[str, Any]) -> str | None:
    """QuPath classification name of a GeoJSON feature, or None."""
    props = feature.get("properties") or {}
    cls = props.get("classification")
    name = cls.get("name") if isinstance(cls, dict) else cls if isinstance(cls, str) else None
    return name or None


def read_geojson(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read the features of a GeoJSON FeatureCollection, a list of Features or a single Feature."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable GeoJSON ({err})") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list) or not all(
        isinstance(f, dict) and f.get("type") == "Feature" for f in features
    ):
        raise InputError(f"{path}: not a GeoJSON FeatureCollection, Feature or list of Features")
    return features
