"""Time promptsam.metrics on 1000x1000 label maps with many nuclei (median of 5 runs).

Maps: a synthetic 1000x1000 map with ~800 ellipse nuclei, plus MoNuSeg training labels read in place from
../shared/data/monuseg/train/labels/*.tif when present. The prediction is a perturbed copy (shifted, grown,
some instances dropped, split or added). Prints a table and writes benchmarks/results/metrics_speed.json.

    .venv/bin/python benchmarks/metrics_speed.py [--repeats 5] [--monuseg 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds  # noqa: E402
from promptsam.metrics import aji, aji_plus, object_metrics, panoptic_quality, score_instances

HERE = Path(__file__).resolve().parent
MONUSEG = HERE.parent.parent / "shared" / "data" / "monuseg" / "train" / "labels"


def synthetic_map(rng: np.random.Generator, size: int = 1000, n: int = 800) -> np.ndarray:
    """Label map with about `n` random ellipses (later ones painted over earlier ones), uint32 sparse ids."""
    lab = np.zeros((size, size), np.uint32)
    yy, xx = np.mgrid[-12:13, -12:13]
    ids = rng.choice(2**31, size=n, replace=False).astype(np.uint32) + 1
    for k in ids:
        a, b = rng.uniform(4, 11, size=2)
        theta = rng.uniform(0, np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        disk = (u / a) ** 2 + (v / b) ** 2 <= 1
        r, c = rng.integers(12, size - 13, size=2)
        window = lab[r - 12 : r + 13, c - 12 : c + 13]
        window[disk] = k
    return lab


def perturb(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    """Prediction-like copy: 1-2 px shift, grow or shrink, drop 5 %, split 5 %, add 40 spurious blobs."""
    pred = np.roll(lab.astype(np.int64), tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    grown = ndimage.grey_dilation(pred, size=(3, 3))
    pred = np.where(pred == 0, grown, pred)
    ids = np.unique(pred)[1:]
    pred[np.isin(pred, rng.choice(ids, size=len(ids) // 20, replace=False))] = 0
    split = np.isin(pred, rng.choice(ids, size=len(ids) // 20, replace=False))
    pred[split & (np.arange(pred.shape[1])[None, :] % 16 < 8)] += 2**40  # huge ids on purpose
    top = int(pred.max())
    for k in range(40):
        r, c = rng.integers(0, pred.shape[0] - 8, size=2)
        pred[r : r + 7, c : c + 7] = top + k + 1
    return pred


def main() -> None:
    """Run the benchmark, print a table and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--monuseg", type=int, default=3, help="how many MoNuSeg label maps to add (0 = none)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "metrics_speed.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    cases: list[tuple[str, np.ndarray]] = [("synthetic-800", synthetic_map(rng))]
    if args.monuseg and MONUSEG.is_dir():
        import tifffile

        for path in sorted(MONUSEG.glob("*.tif"))[: args.monuseg]:
            cases.append((f"monuseg/{path.stem}", np.asarray(tifffile.imread(path))))

    rows = []
    for name, gt in cases:
        pred = perturb(rng, gt)
        scores = score_instances(gt, pred)
        row = {
            "case": name,
            "shape": list(gt.shape),
            "n_gt": int(scores["n_gt"]),
            "n_pred": int(scores["n_pred"]),
            "score_instances_s": median_seconds(lambda g=gt, p=pred: score_instances(g, p), repeats=args.repeats),
            "aji_s": median_seconds(lambda g=gt, p=pred: aji(g, p), repeats=args.repeats),
            "aji_plus_s": median_seconds(lambda g=gt, p=pred: aji_plus(g, p), repeats=args.repeats),
            "pq_s": median_seconds(lambda g=gt, p=pred: panoptic_quality(g, p), repeats=args.repeats),
            "object_metrics_s": median_seconds(
                lambda g=gt, p=pred: object_metrics(g, p), repeats=max(1, args.repeats // 2)
            ),
            "scores": {k: round(v, 6) for k, v in scores.items()},
        }
        rows.append(row)

    cols = ("score_inst", "aji", "aji+", "pq", "objects")
    header = f"{'case':<36} {'n_gt':>5} {'n_pred':>6} " + " ".join(
        f"{c:>10}" if i == 0 else f"{c:>8}" for i, c in enumerate(cols)
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['case']:<36} {r['n_gt']:>5} {r['n_pred']:>6} {r['score_instances_s'] * 1e3:>8.1f}ms "
            f"{r['aji_s'] * 1e3:>6.1f}ms {r['aji_plus_s'] * 1e3:>6.1f}ms {r['pq_s'] * 1e3:>6.1f}ms "
            f"{r['object_metrics_s'] * 1e3:>6.0f}ms"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "metrics_speed",
        "repeats": args.repeats,
        "statistic": "median wall time, seconds (object_metrics: median of repeats//2)",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
