"""Lesion floor benchmark: FLAIR intensity-percentile threshold inside the brain mask on the three 3D dev volumes.

The percentile is chosen leave-one-out over the three development volumes (ms_lesion_3d patient07 and patient19,
brats2021_edema_3d BraTS2021_01646): each volume is segmented with the candidate that has the best mean Dice on
the other two. Because that uses the frozen validation cases (patient07, BraTS) to choose percentiles for the
other folds, a second table follows the frozen split strictly: the percentile is chosen on the train case only
(patient19) and applied to the validation cases. Scores are per volume on the original grid (mm).

    .venv/bin/python benchmarks/lesion_floor.py [--data ../shared/data] [--erosion 0] [--min-size 0]

Writes benchmarks/results/lesion_floor.json and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = (("ms_lesion_3d", "patient07"), ("ms_lesion_3d", "patient19"), ("brats2021_edema_3d", "BraTS2021_01646"))
CANDIDATES = (90.0, 92.0, 94.0, 95.0, 96.0, 97.0, 98.0, 98.5, 99.0, 99.3, 99.5, 99.7, 99.8, 99.9)
COLUMNS = ["case", "split", "percentile", "dice", "iou", "hd95", "asd", "lesion_recall", "lesion_precision",
           "n_gt_lesions", "n_pred_lesions"]


def _mean(rows: list[dict]) -> dict[str, float]:
    """Mean of each metric over the rows, NaN skipped (NaN when no row has a finite value)."""
    import numpy as np

    out = {}
    for key in COLUMNS[3:9]:
        values = np.asarray([r[key] for r in rows], dtype=float)
        out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the leave-one-out floor and the train-to-val floor, print the tables and write the JSON."""
    from promptsam.data.splits import VAL, default_data_root
    from promptsam.data.volumes import list_volume_cases
    from promptsam.inference.classical3d import choose_percentile, dice_table, percentile_threshold
    from promptsam.io.volumes import read_pair
    from promptsam.metrics.volume import score_lesions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="data root (default: ../shared/data)")
    parser.add_argument("--erosion", type=int, default=0, help="erode the brain mask (voxels > 0) by this many voxels")
    parser.add_argument("--min-size", type=int, default=0, help="drop predicted components below this many voxels")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lesion_floor.json")
    args = parser.parse_args(argv)
    root = args.data or default_data_root()
    if not root.is_dir():
        print(f"lesion_floor: data not found at {root}", file=sys.stderr)
        return 2
    options = {"erosion": args.erosion, "min_size": args.min_size}

    t0 = time.perf_counter()
    volumes, labels, spacings, meta = [], [], [], []
    for dataset, case in CASES:
        sample = {s.name: s for s in list_volume_cases(root / dataset, "train")}[case]
        image, label = read_pair(sample.image, sample.label)
        volumes.append(image.array)
        labels.append(label.array)
        spacings.append(image.spacing)
        meta.append({"dataset": dataset, "case": case, "split": "val" if case in VAL[dataset] else "train",
                     "shape": list(image.shape), "spacing_mm": list(image.spacing)})

    table = dice_table(volumes, labels, CANDIDATES, **options)
    chosen = choose_percentile(volumes, labels, CANDIDATES, **options)

    def score(i: int, percentile: float) -> dict:
        pred = percentile_threshold(volumes[i], percentile=percentile, **options)
        return {**meta[i], "percentile": percentile, **score_lesions(labels[i], pred, spacing=spacings[i])}

    loo = [score(i, p) for i, p in enumerate(chosen)]
    train_idx = [i for i, m in enumerate(meta) if m["split"] == "train"]
    val_idx = [i for i, m in enumerate(meta) if m["split"] == "val"]
    train_mean = table[train_idx].mean(axis=0)
    split_pct = float(CANDIDATES[int(train_mean.argmax())])
    frozen = [score(i, split_pct) for i in val_idx]

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import print_table, save_json

    print("Leave-one-out over the three dev volumes (percentile chosen on the other two):")
    print_table(loo + [{"case": "mean", **_mean(loo)}], COLUMNS)
    print(f"\nFrozen split: percentile {split_pct} chosen on train ({', '.join(meta[i]['case'] for i in train_idx)}),"
          " applied to val:")
    print_table(frozen, COLUMNS)

    results = {
        "benchmark": "3D lesion floor (FLAIR percentile threshold inside the brain mask, voxels > 0)",
        "command": "python benchmarks/lesion_floor.py" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in options.items() if v),
        "segmenter": "promptsam.inference.classical3d.percentile_threshold",
        "options": options,
        "candidates": list(CANDIDATES),
        "metrics": "promptsam.metrics.volume.score_lesions (mm; lesions = 26-connected components; a GT lesion is "
                   "detected when any predicted voxel overlaps it)",
        "dice_table": {m["case"]: dict(zip(map(str, CANDIDATES), row.tolist(), strict=True))
                       for m, row in zip(meta, table, strict=True)},
        "leave_one_out": {"rows": loo, "mean": _mean(loo)},
        "frozen_split": {"percentile": split_pct, "chosen_on": [meta[i]["case"] for i in train_idx], "rows": frozen},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    save_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
