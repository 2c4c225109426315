"""Large images: block-wise segmentation (`promptsam segment` on a slide-sized TIFF) vs one pass per tile.

    .venv/bin/python benchmarks/large_image_benchmark.py [--model default] [--threads 2] [--grid 3] [--fast]
                                                         [--workers N]

Builds a grid x grid mosaic of the MoNuSeg validation images (1000x1000 each, flipped and rotated copies, so the
mosaic's ground truth is known) as a tiled JPEG TIFF, then, each in a fresh process (peak RSS = VmHWM):
- blocks: the segment CLI on the mosaic (1024-px blocks, 64-px halo, each block at its own magnification);
- reference: `model.segment` on each 1000x1000 tile alone, one pass each (what the CLI does for a small image);
- with `--workers N`: the segment CLI with `--workers N` (N processes sharing the `--threads` CPU threads; peak
  memory = the main process + N x the largest worker).
Reports seconds per megapixel, peak memory, and PQ / AJI / Dice of the whole mosaic against its ground truth for
both (the reference's tiles pasted side by side; nuclei cut by tile borders count against it as they would for
a user tiling by hand). Writes benchmarks/results/large_image_benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def build_mosaic(root: Path, grid: int, folder: Path) -> tuple[Path, Path]:
    """Mosaic image (tiled JPEG TIFF) and its instance labels (.npy), from the MoNuSeg validation images."""
    import numpy as np
    import tifffile

    from promptsam.data.splits import split_samples
    from promptsam.io import read_image, read_labels

    tiles = [(read_image(s.image), read_labels(s.label)) for s in split_samples("monuseg", "val", root=root)]
    rows_img, rows_lbl, offset = [], [], 0
    for i in range(grid):
        row_img, row_lbl = [], []
        for j in range(grid):
            k = i * grid + j
            image, labels = tiles[k % len(tiles)]
            image, labels = np.rot90(image, k // len(tiles)), np.rot90(labels, k // len(tiles))
            if (k // len(tiles)) % 2:
                image, labels = image[:, ::-1], labels[:, ::-1]
            row_img.append(image[:1000, :1000])
            row_lbl.append(np.where(labels[:1000, :1000] > 0, labels[:1000, :1000].astype(np.int64) + offset, 0))
            offset += int(labels.max())
        rows_img.append(np.concatenate(row_img, axis=1))
        rows_lbl.append(np.concatenate(row_lbl, axis=1))
    image_path, label_path = folder / "mosaic.tif", folder / "mosaic_labels.npy"
    tifffile.imwrite(image_path, np.ascontiguousarray(np.concatenate(rows_img)), tile=(256, 256),
                     compression="jpeg", compressionargs={"level": 95}, photometric="rgb")
    np.save(label_path, np.concatenate(rows_lbl).astype(np.uint32))
    return image_path, label_path


def measure(kind: str, args: argparse.Namespace, image_path: Path, out: Path) -> dict:
    """One run in this (fresh) process."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    if kind in ("blocks", "workers"):
        import os
        import resource

        from promptsam.cli.main import main as cli

        command = ["segment", str(image_path), "-o", str(out), "--model", args.model, "--device", "cpu",
                   "--no-overlay", "--block-size", "1024"] + (["--fast"] if args.fast else [])
        if kind == "workers":
            os.sched_setaffinity(0, range(args.threads))  # the workers share --threads CPUs (cpu_count // N each)
            command += ["--workers", str(args.workers)]
        t0 = time.perf_counter()
        code = cli(command)
        seconds = time.perf_counter() - t0
        if code:
            raise SystemExit(f"segment CLI failed with exit code {code}")
        peak = _peak_mb()
        if kind == "workers":
            peak += args.workers * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        return {"seconds": seconds, "peak_mb": peak, "labels": str(out / "mosaic.labels.tif")}
    from promptsam.io import read_image, write_labels
    from promptsam.pretrained import load_model

    model = load_model(args.model, device="cpu")
    image = read_image(image_path)
    labels = np.zeros(image.shape[:2], np.uint32)
    seconds, offset = 0.0, 0
    for y in range(0, image.shape[0], 1000):
        for x in range(0, image.shape[1], 1000):
            t0 = time.perf_counter()
            tile = model.segment(image[y : y + 1000, x : x + 1000], fast=args.fast).labels
            seconds += time.perf_counter() - t0
            labels[y : y + 1000, x : x + 1000] = np.where(tile > 0, tile + offset, 0)
            offset += int(tile.max())
    write_labels(out / "tiles.labels.tif", labels)
    return {"seconds": seconds, "peak_mb": _peak_mb(), "labels": str(out / "tiles.labels.tif")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grid", type=int, default=3, help="mosaic of grid x grid 1000x1000 tiles")
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="also run the CLI with --workers N")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args, args.image, args.out)))
        return 0

    import numpy as np

    from common import print_table, write_results
    from promptsam.data.splits import default_data_root
    from promptsam.io import read_labels
    from promptsam.metrics.instance import score_instances

    root = args.data or default_data_root()
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="large_image_") as tmp:
        image_path, label_path = build_mosaic(root, args.grid, Path(tmp))
        truth = np.load(label_path)
        megapixels = truth.size / 1e6
        for kind in ("blocks", "tiles") + (("workers",) if args.workers else ()):
            cmd = [sys.executable, __file__, "--measure", kind, "--model", args.model, "--threads", str(args.threads),
                   "--image", str(image_path), "--out", str(Path(tmp) / kind)] + (["--fast"] if args.fast else [])
            cmd += ["--workers", str(args.workers)] if args.workers else []
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{kind}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'failed'}")
            record = json.loads(done.stdout.strip().splitlines()[-1])
            scores = score_instances(truth, read_labels(record.pop("labels")))
            results[kind] = {**record, "seconds_per_megapixel": record["seconds"] / megapixels,
                             **{k: float(scores[k]) for k in ("pq", "aji", "dice", "dq", "sq")}}
            rows.append({"method": {"blocks": "segment CLI, 1024-px blocks + 64-px halo",
                                    "tiles": "one pass per 1000x1000 tile (reference)",
                                    "workers": f"segment CLI, blocks in {args.workers} worker processes"}[kind],
                         "s / MP": results[kind]["seconds_per_megapixel"], "peak RSS MB": results[kind]["peak_mb"],
                         "PQ": results[kind]["pq"], "AJI": results[kind]["aji"], "Dice": results[kind]["dice"]})
    ratio = results["blocks"]["seconds"] / results["tiles"]["seconds"]
    rows.append({"method": "blocks / reference", "s / MP": ratio,
                 "peak RSS MB": results["blocks"]["peak_mb"] / results["tiles"]["peak_mb"],
                 "PQ": results["blocks"]["pq"] - results["tiles"]["pq"]})
    if args.workers:
        rows.append({"method": f"{args.workers} workers / blocks in one process",
                     "s / MP": results["workers"]["seconds"] / results["blocks"]["seconds"],
                     "peak RSS MB": results["workers"]["peak_mb"] / results["blocks"]["peak_mb"],
                     "PQ": results["workers"]["pq"] - results["blocks"]["pq"]})
    print(f"mosaic {args.grid}x{args.grid} tiles = {megapixels:.0f} MP, model {args.model}, {args.threads} threads"
          f"{', fast' if args.fast else ''} (ratio rows: time and memory ratios, PQ difference)")
    print_table(rows, ["method", "s / MP", "peak RSS MB", "PQ", "AJI", "Dice"])
    write_results("large_image_benchmark" + ("_fast" if args.fast else "") + (f"_workers{args.workers}"
                                                                            if args.workers else ""),
                  {"command": " ".join(["python", "benchmarks/large_image_benchmark.py", *(argv or sys.argv[1:])]),
                   "megapixels": megapixels, "grid": args.grid, "results": results, "time_ratio": ratio})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
