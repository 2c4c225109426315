"""How well a PromptNucSeg model's prompter finds nuclei, on the training images and on the validation split.

    .venv/bin/python benchmarks/prompter_detection.py --model default [--threads 2] [--radius 6] [--name NAME]

For each dataset (monuseg, dsb2018, consep) and split (train, val), runs the prompter (with the model's stored
decoding settings and centring CNN, one view) on every image and matches its points to the ground-truth centroids
within `--radius` pixels (`promptsam.metrics.detection.detection_scores`, Hungarian within the radius), pooling the
counts over the split. Training F1 well above validation F1 means the prompter overfits; both low means it
underfits (more training or capacity would help). Prints a table, writes benchmarks/results/<NAME>.json
(default prompter_detection).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, print_table, write_results  # noqa: E402
from promptsam.data.splits import default_data_root, split_samples  # noqa: E402
from promptsam.data.targets import nucleus_points  # noqa: E402
from promptsam.inference.preprocess import to_rgb255  # noqa: E402
from promptsam.io import read_image  # noqa: E402
from promptsam.io.images import read_labels  # noqa: E402
from promptsam.metrics.detection import detection_scores  # noqa: E402
from promptsam.pretrained import load_model  # noqa: E402

DATASETS = ("monuseg", "dsb2018", "consep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="promptsam model file or shipped name")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--radius", type=float, default=6.0, help="match radius in pixels")
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--name", default="prompter_detection", help="results file name")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    rows, results = [], {"model": str(args.model), "radius": args.radius, "machine": machine(), "datasets": {}}
    for dataset in DATASETS:
        for split in ("train", "val"):
            samples = split_samples(dataset, split, root=args.data)
            counts = {"tp": 0.0, "n_gt": 0.0, "n_pred": 0.0}
            for sample in samples:
                gt, _ = nucleus_points(read_labels(sample.label))
                with torch.inference_mode():
                    found = model.find_prompts(to_rgb255(read_image(sample.image)), fast=True)
                scores = detection_scores(gt, found["points"], pred_scores=found["scores"], radius=args.radius)
                for key in counts:
                    counts[key] += scores[key]
            precision = counts["tp"] / max(counts["n_pred"], 1.0)
            recall = counts["tp"] / max(counts["n_gt"], 1.0)
            f1 = 2 * precision * recall / max(precision + recall, 1e-9)
            row = {"dataset": dataset, "split": split, "images": len(samples), "nuclei": int(counts["n_gt"]),
                   "points": int(counts["n_pred"]), "precision": round(precision, 3), "recall": round(recall, 3),
                   "f1": round(f1, 3)}
            rows.append(row)
            results["datasets"].setdefault(dataset, {})[split] = row
    print_table(rows, ["dataset", "split", "images", "nuclei", "points", "precision", "recall", "f1"])
    write_results(args.name, results)


if __name__ == "__main__":
    main()
