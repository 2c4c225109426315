"""Nuclei on the validation split: a promptsam model beside the classical floor and the Cellpose 3 peer.

    .venv/bin/python benchmarks/nucleus_benchmark.py --model runs/default_v1/model.pt [--threads 2]

In one run: segments the fixed validation split of monuseg, dsb2018 and consep with the model and with the
classical floor (its train-tuned parameters from benchmarks/results/classical_floor.json), scores both with
`promptsam.evaluation.evaluate_folders` (the code of `promptsam evaluate`), and reads the Cellpose peer's scores
from benchmarks/results/cellpose_peer.json (trained for the same CPU time by benchmarks/cellpose_peer.py).
Also times seconds per image (and per 1000x1000 MoNuSeg image) and peak memory. Prints a table and writes
benchmarks/results/nucleus_benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import print_table, write_results  # noqa: E402
from promptsam.data.splits import default_data_root, split_samples  # noqa: E402
from promptsam.evaluation import evaluate_folders, summarize  # noqa: E402
from promptsam.inference.classical import watershed_nuclei  # noqa: E402
from promptsam.io import read_image, write_labels  # noqa: E402

DATASETS = ("monuseg", "dsb2018", "consep")
KEYS = ("pq", "aji", "dice")


def run_method(segment, samples, out_dir: Path) -> dict:
    """Segment `samples` with `segment(image) -> labels` into out_dir; return seconds per image."""
    seconds = {}
    for s in samples:
        image = read_image(s.image)
        t0 = time.perf_counter()
        labels = segment(image)
        seconds[s.name] = time.perf_counter() - t0
        write_labels(out_dir / f"{s.name}.labels.tif", labels)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="promptsam model file or shipped name")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--fast", action="store_true", help="segment with fast=True (results: nucleus_benchmark_fast)")
    parser.add_argument("--name", default=None,
                        help="results file name (default nucleus_benchmark, or nucleus_benchmark_fast with --fast)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from promptsam.pretrained import load_model

    model = load_model(args.model, device="cpu")
    floor = json.loads((HERE / "results" / "classical_floor.json").read_text())["datasets"]
    peer_file = HERE / "results" / "cellpose_peer.json"
    peer = json.loads(peer_file.read_text()) if peer_file.is_file() else None
    rows, results = [], {"model": str(args.model), "fast": args.fast, "datasets": {}}
    for dataset in DATASETS:
        samples = split_samples(dataset, "val", root=args.data)
        gt_dir = args.data / dataset / "train" / "labels"
        entry = {}
        for method, segment in (
            ("promptsam", lambda im: model.segment(im, fast=args.fast).labels),
            ("classical floor", lambda im, p=floor[dataset]["params"]: watershed_nuclei(im, **p)),
        ):
            with tempfile.TemporaryDirectory() as tmp:
                seconds = run_method(segment, samples, Path(tmp))
                scored = evaluate_folders(tmp, gt_dir, allow_missing=True)
            mean = summarize(scored)["2d"]
            entry[method] = {"mean": {k: mean[k] for k in KEYS}, "seconds_per_image": float(np.mean(list(
                seconds.values()))), "seconds": seconds}
        if peer is not None and dataset in peer.get("datasets", {}):
            pm = peer["datasets"][dataset]
            entry["cellpose 3 (peer)"] = {"mean": {k: pm["mean"][k] for k in KEYS},
                                          "seconds_per_image": pm.get("seconds_per_image")}
        results["datasets"][dataset] = entry
        for method, e in entry.items():
            rows.append({"dataset": dataset, "method": method, **e["mean"], "s/image": e["seconds_per_image"]})
    results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    monuseg = results["datasets"]["monuseg"]["promptsam"]["seconds_per_image"]
    results["promptsam_seconds_per_1000x1000"] = monuseg
    print_table(rows, ["dataset", "method", "pq", "aji", "dice", "s/image"])
    print(f"\npromptsam: {monuseg:.2f} s per 1000x1000 MoNuSeg image, peak RSS {results['peak_rss_gb']:.2f} GB "
          f"({args.threads} threads)")
    write_results(args.name or ("nucleus_benchmark_fast" if args.fast else "nucleus_benchmark"), results)


if __name__ == "__main__":
    main()
