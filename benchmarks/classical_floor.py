"""Classical floor benchmark: Otsu + distance-transform watershed on the validation split of each 2D dataset.

For each dataset (monuseg, dsb2018, consep) the floor's parameters (min_distance, min_area, sigma) are
chosen by mean PQ on the TRAIN split of the fixed split in promptsam.data.splits (never on val), then
the floor is run on the VALIDATION split, predictions are written as <stem>.labels.tif to a temporary
folder and scored with `promptsam.evaluation.evaluate_folders` (the code behind `promptsam evaluate`).

    .venv/bin/python benchmarks/classical_floor.py [--data ../shared/data] [--no-tune]

Writes benchmarks/results/classical_floor.json and prints a table (mean over val images).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("monuseg", "dsb2018", "consep")
DEFAULTS = {"min_distance": 8, "min_area": 80, "sigma": 1.0}
GRID = {"min_distance": (4, 8, 12), "min_area": (20, 80, 160), "sigma": (1.0, 2.0)}
TABLE_KEYS = ("pq", "aji", "dice", "dq", "sq")


def _segment_one(job: tuple[str, str, dict]) -> str:
    """Segment one image into <out>.labels.tif (a top-level function so worker processes can run it)."""
    from promptsam.inference.classical import watershed_nuclei
    from promptsam.io import read_image, write_labels

    image_path, out_path, params = job
    write_labels(out_path, watershed_nuclei(read_image(image_path), **params))
    return out_path


def segment_folder(split_dir: Path, names: list[str], out_dir: Path, params: dict, *, workers: int) -> None:
    """Run the floor on `names` of a uniform-layout split folder, writing <name>.labels.tif into out_dir."""
    from promptsam.data import list_samples

    samples = {s.name: s for s in list_samples(split_dir, "train")}
    jobs = [(str(samples[n].image), str(out_dir / f"{n}.labels.tif"), params) for n in names]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_segment_one, jobs, chunksize=2))
    else:
        for job in jobs:
            _segment_one(job)


def score(split_dir: Path, names: list[str], params: dict, *, workers: int) -> list[dict]:
    """Segment `names` with `params` into a temp folder and score them like `promptsam evaluate` does."""
    from promptsam.evaluation import evaluate_folders

    with tempfile.TemporaryDirectory(prefix="classical_floor_") as tmp:
        segment_folder(split_dir, names, Path(tmp), params, workers=workers)
        return evaluate_folders(tmp, split_dir, names=names)


def main(argv: list[str] | None = None) -> int:
    """Tune on train, score on val, print the table and write the JSON."""
    from promptsam.data.splits import default_data_root, split_names
    from promptsam.evaluation import summarize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="data root (default: ../shared/data)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--no-tune", action="store_true", help=f"use the defaults {DEFAULTS} everywhere")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "classical_floor.json")
    args = parser.parse_args(argv)
    root = args.data or default_data_root()
    if not root.is_dir():
        print(f"classical_floor: data not found at {root}", file=sys.stderr)
        return 2

    results: dict = {
        "benchmark": "classical floor (Otsu + distance-transform watershed)",
        "command": "python benchmarks/classical_floor.py" + (" --no-tune" if args.no_tune else ""),
        "split": "validation split of promptsam.data.splits (docs/data.md); parameters chosen on train only",
        "segmenter": "promptsam.inference.classical.watershed_nuclei",
        "datasets": {},
    }
    for ds in args.datasets:
        t0 = time.perf_counter()
        split_dir = root / ds / "train"
        names = split_names(ds, root=root)
        tuning = []
        params = dict(DEFAULTS)
        if not args.no_tune:
            for values in itertools.product(*GRID.values()):
                cand = {**DEFAULTS, **dict(zip(GRID, values, strict=True))}
                train_pq = summarize(score(split_dir, names["train"], cand, workers=args.workers))["2d"]["pq"]
                tuning.append({"params": cand, "train_pq": train_pq})
                print(f"  {ds} train {cand}: PQ {train_pq:.4f}", file=sys.stderr)
            params = max(tuning, key=lambda t: t["train_pq"])["params"]
        rows = score(split_dir, names["val"], params, workers=args.workers)
        mean = summarize(rows)["2d"]
        results["datasets"][ds] = {
            "params": params,
            "n_train": len(names["train"]),
            "n_val": len(rows),
            "mean": mean,
            "tuning_on_train": tuning,
            "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1),
        }

    header = "| dataset | val images | PQ | AJI | Dice | DQ | SQ | min_distance | min_area | sigma |"
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for ds, res in results["datasets"].items():
        m, p = res["mean"], res["params"]
        cells = " | ".join(f"{m[k]:.3f}" for k in TABLE_KEYS)
        params = f"{p['min_distance']} | {p['min_area']} | {p['sigma']}"
        lines.append(f"| {ds} | {res['n_val']} | {cells} | {params} |")
    print("\n".join(lines))

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import save_json

    save_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
