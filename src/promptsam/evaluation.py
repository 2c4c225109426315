"""Score a folder of predictions against a folder of ground truth: rows per image, means, table, JSON, CSV.

2D label maps are scored with `promptsam.metrics.score_instances` (plus `score_classes` when both class
maps are given); 3D volumes with `promptsam.metrics.score_volume`, using the ground-truth NIfTI voxel
spacing unless one is given. Means are over images and skip NaN/inf values (e.g. HD95 of an empty
prediction); `n_gt`/`n_pred` are summed instead of averaged.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from promptsam.data.pairing import Pair, pair_files
from promptsam.errors import InputError
from promptsam.io import atomic_path, is_volume_path, read_label, read_labels

__all__ = [
    "evaluate_folders",
    "format_table",
    "json_safe",
    "score_pair",
    "summarize",
    "write_csv",
    "write_json",
]

TABLE_KEYS = {
    "2d": ("pq", "aji", "dice", "dq", "sq", "aji_plus", "n_gt", "n_pred"),
    "3d": ("dice", "iou", "hd95", "asd", "lesion_recall", "lesion_precision"),
}
_SUM_KEYS = ("n_gt", "n_pred")


def _load(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Read a label map; return (integer array, voxel spacing in mm for NIfTI volumes else None)."""
    if is_volume_path(path):
        vol = read_label(path, binary=False, required=False)
        return vol.array, vol.spacing
    return read_labels(path), None


def _plain(value: Any) -> Any:
    """Turn numpy scalars into Python numbers so rows serialise cleanly."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def score_pair(pair: Pair, *, spacing: Sequence[float] | None = None) -> dict[str, Any]:
    """Score one matched prediction/ground-truth pair; return a row {name, kind, metric: value, ...}."""
    from promptsam import metrics
    from promptsam.metrics.volume import score_lesions

    gt, gt_spacing = _load(pair.gt)
    pred, _ = _load(pair.pred)
    if gt.shape != pred.shape:
        raise InputError(f"{pair.pred}: shape {pred.shape} does not match ground truth {pair.gt} {gt.shape}")
    row: dict[str, Any] = {"name": pair.name}
    if gt.ndim == 3:
        row["kind"] = "3d"
        sp = tuple(spacing) if spacing is not None else gt_spacing
        if sp is not None and len(sp) == 1:
            sp = sp * 3
        row.update(score_lesions(gt > 0, pred > 0, spacing=sp if sp is not None else 1.0))
    else:
        row["kind"] = "2d"
        row.update(metrics.score_instances(gt, pred))
        if pair.gt_classes is not None and pair.pred_classes is not None:
            gt_cls, pred_cls = read_labels(pair.gt_classes), read_labels(pair.pred_classes)
            for path, arr in ((pair.gt_classes, gt_cls), (pair.pred_classes, pred_cls)):
                if arr.shape != gt.shape:
                    raise InputError(f"{path}: class map shape {arr.shape} does not match labels {gt.shape}")
            row.update(metrics.score_classes(gt, gt_cls, pred, pred_cls))
    for key in _SUM_KEYS:
        if key in row and _finite(row[key]):
            row[key] = int(row[key])
    return {k: _plain(v) for k, v in row.items()}


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    gt_classes_dir: str | os.PathLike | None = None,
    pred_classes_dir: str | os.PathLike | None = None,
    spacing: Sequence[float] | None = None,
    allow_missing: bool = False,
    names: Sequence[str] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Pair files by stem and score each pair; return one row per image sorted by name.

    `names` restricts scoring to those stems (e.g. a validation split); `on_note` receives skip notes.
    """
    pairs, notes = pair_files(
        pred_dir,
        gt_dir,
        gt_classes_dir=gt_classes_dir,
        pred_classes_dir=pred_classes_dir,
        allow_missing=allow_missing,
        names=names,
    )
    for note in notes:
        if on_note is not None:
            on_note(note)
    return [score_pair(p, spacing=spacing) for p in pairs]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return {kind: {"n": images, metric: mean over images (NaN/inf skipped), n_gt/n_pred: sums}}."""
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted({r.get("kind", "2d") for r in rows}):
        group = [r for r in rows if r.get("kind", "2d") == kind]
        keys = [k for k in group[0] if k not in ("name", "kind")]
        for r in group[1:]:
            keys += [k for k in r if k not in keys and k not in ("name", "kind")]
        summary: dict[str, Any] = {"n": len(group)}
        for key in keys:
            values = [r[key] for r in group if _finite(r.get(key))]
            if key in _SUM_KEYS:
                summary[key] = int(sum(values))
            else:
                summary[key] = float(np.mean(values)) if values else float("nan")
        out[kind] = summary
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _render(cells: list[str], widths: list[int]) -> str:
    """Join one table line: the name left-aligned (truncated to its width), numbers right-aligned."""
    name = cells[0] if len(cells[0]) <= widths[0] else cells[0][: widths[0] - 1] + "~"
    rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
    return "  ".join([name.ljust(widths[0]), *rest])


def format_table(rows: Sequence[dict[str, Any]], summary: dict[str, dict[str, Any]] | None = None) -> str:
    """Render rows (and the per-kind mean) as a plain-text table, one table per kind."""
    summary = summarize(rows) if summary is None else summary
    blocks = []
    for kind, mean in summary.items():
        group = [r for r in rows if r.get("kind", "2d") == kind]
        keys = [k for k in TABLE_KEYS.get(kind, ()) if k in mean]
        keys += [k for k in mean if k not in keys and k != "n" and k not in TABLE_KEYS.get(kind, ())]
        header = ["name", *keys]
        lines = [[str(r["name"]), *(_fmt(r.get(k, "")) for k in keys)] for r in group]
        lines.append([f"mean ({mean['n']} {kind})", *(_fmt(mean[k]) for k in keys)])
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        widths[0] = min(widths[0], 40)
        out = [_render(header, widths), *(_render(line, widths) for line in lines[:-1])]
        out += ["-" * len(out[0]), _render(lines[-1], widths)]
        blocks.append("\n".join(out))
    return "\n\n".join(blocks)


def json_safe(value: Any) -> Any:
    """Return `value` with numpy scalars made plain and NaN/inf replaced by None, recursively."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return _plain(value)


def write_json(
    path: str | os.PathLike, rows: Sequence[dict[str, Any]], *, meta: dict[str, Any] | None = None
) -> Path:
    """Write {**meta, "mean": per-kind means, "rows": rows} as JSON atomically (NaN/inf become null)."""
    doc = {**(meta or {}), "mean": summarize(rows), "rows": list(rows)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(doc), indent=2) + "\n")
    return Path(path)


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write one CSV row per image plus one `mean` row per kind, atomically."""
    summary = summarize(rows)
    columns = ["name", "kind"]
    for r in rows:
        columns += [k for k in r if k not in columns]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
        for kind, mean in summary.items():
            writer.writerow({"name": "mean", "kind": kind, **{k: v for k, v in mean.items() if k != "n"}})
    return Path(path)
