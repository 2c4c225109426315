"""M-SAM benchmark: Dice with simulated clicks, automatic mode, the percentile floor, speed and memory, per volume.

    .venv/bin/python benchmarks/msam_benchmark.py --model RUN/model.pt [--threads 2] [--data ../shared/data]
        [--no-speed] [--results NAME]

Per dev volume (frozen split: patient07 and BraTS are validation, patient19 trains):
- evaluation mode (the paper's protocol): clicks simulated from the ground truth, region centred on it; Dice on the
  input grid after 1, 2, 3, 5 and 10 clicks (same seed, so the first t clicks are the same in every row);
- automatic mode (no ground truth): the lesion detector's regions and clicks, then M-SAM; Dice, IoU, HD95, ASD (mm),
  lesion recall/precision; the detector alone beside it;
- the classical floor: FLAIR percentile threshold inside the brain, the percentile chosen leave-one-out on the
  other two volumes (as benchmarks/lesion_floor.py).
Speed and peak memory (VmHWM of a fresh process each): one 128³ forward (embedding + one click round) of the
full SAM-Med3D + MEA (random weights; what a user with the official checkpoint runs) and of this model; the
reference implementation's (medim) SAM-Med3D encoder in the same run when installed; and automatic mode on a whole
182x218x182 volume (`--no-speed` skips them). Writes benchmarks/results/msam_benchmark.json (or NAME.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

CASES = (("ms_lesion_3d", "patient07"), ("ms_lesion_3d", "patient19"), ("brats2021_edema_3d", "BraTS2021_01646"))
CLICKS = (1, 2, 3, 5, 10)
PERCENTILES = (90.0, 92.0, 94.0, 95.0, 96.0, 97.0, 98.0, 98.5, 99.0, 99.3, 99.5, 99.7, 99.8, 99.9)


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def measure(kind: str, model_path: str, volume_path: str, threads: int) -> dict:
    """One measurement in this (fresh) process: seconds and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    from common import median_seconds
    from promptsam.methods.msam import MSAM, load_config

    if kind == "volume":
        from promptsam.io.volumes import read_volume

        model = MSAM.load(model_path, device="cpu")
        volume = read_volume(volume_path)
        model.segment(volume)  # warm-up
        t0 = time.perf_counter()
        result = model.segment(volume)
        return {"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb(), "regions": len(result.regions),
                "shape": list(volume.shape)}
    x = torch.randn(1, 1, 128, 128, 128)
    coords, labels = torch.tensor([[[64.0, 64.0, 64.0]]]), torch.tensor([[1]])
    if kind == "reference":
        from medim.models.sam_med3d import build_sam3D_vit_b_ori  # noqa: PLC0415 - test dependency only

        ref = build_sam3D_vit_b_ori(pretrained=False).eval()
        with torch.inference_mode():
            seconds = median_seconds(lambda: ref.image_encoder(x), repeats=3)
        return {"seconds": seconds, "peak_mb": _peak_mb(), "what": "medim SAM-Med3D encoder, fp32"}
    if kind == "full":
        model = MSAM(load_config("msam_paper")).eval()
    else:
        model = MSAM.load(model_path, device="cpu")
    net = model.network
    out = {}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        def step(dtype=dtype):
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                net(x, coords, labels)  # embed + one refinement round
        out[precision] = median_seconds(step, repeats=3)
    return {"seconds_fp32": out["fp32"], "seconds_bf16": out["bf16"], "peak_mb": _peak_mb(),
            "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6}


def _subprocess(kind: str, args: argparse.Namespace, volume_path: str) -> dict:
    cmd = [sys.executable, __file__, "--measure", kind, "--model", str(args.model), "--threads", str(args.threads),
           "--volume", volume_path]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="M-SAM model file (promptsam train msam)")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-speed", action="store_true", help="Dice only: skip the speed and memory runs")
    parser.add_argument("--results", default="msam_benchmark", help="results file name under benchmarks/results")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--volume", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, str(args.model), args.volume, args.threads)))
        return 0

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from common import machine, print_table, write_results
    from promptsam.data.splits import VAL, default_data_root
    from promptsam.data.volumes import list_volume_cases, resample, resample_to
    from promptsam.inference.classical3d import choose_percentile, percentile_threshold
    from promptsam.io.volumes import read_pair
    from promptsam.methods.msam import MSAM
    from promptsam.metrics.semantic import dice
    from promptsam.metrics.volume import score_lesions

    root = args.data or default_data_root()
    model = MSAM.load(args.model, device="cpu")
    pairs, meta = [], []
    for dataset, case in CASES:
        sample = {s.name: s for s in list_volume_cases(root / dataset, "train")}[case]
        pairs.append(read_pair(sample.image, sample.label))
        meta.append({"case": case, "split": "val" if case in VAL[dataset] else "train", "image": str(sample.image)})
    chosen = choose_percentile([p[0].array for p in pairs], [p[1].array for p in pairs], PERCENTILES)

    rows = []
    for (image, label), info, pct in zip(pairs, meta, chosen, strict=True):
        row = dict(info)
        for t in CLICKS:
            result = model.segment(image, reference=label.array, rounds=t, seed=0)
            row[f"dice_{t}_clicks"] = dice(label.array, result.mask)
        t0 = time.perf_counter()
        auto = model.segment(image)
        row["auto_seconds"] = time.perf_counter() - t0
        row.update({f"auto_{k}": v for k, v in score_lesions(label.array, auto.mask, spacing=image.spacing).items()})
        grid, grid_affine = resample(image.array, image.affine, spacing=model.config.volume.spacing)
        prob = resample_to(model.lesion_probability(grid), grid_affine, target_affine=image.affine,
                           target_shape=image.shape, mode="bilinear")
        row["detector_dice"] = dice(label.array, prob > model.config.detector.threshold)
        floor = percentile_threshold(image.array, percentile=pct)
        row["floor_percentile"] = pct
        row["floor_dice"] = dice(label.array, floor)
        rows.append(row)
        print(f"  {info['case']}: done", file=sys.stderr)

    speed = {} if args.no_speed else {
        "msam_full_random_128": _subprocess("full", args, meta[0]["image"]),
        "msam_this_model_128": _subprocess("small", args, meta[0]["image"]),
        "reference_sam_med3d_encoder_128": _subprocess("reference", args, meta[0]["image"]),
        "automatic_whole_volume": _subprocess("volume", args, meta[0]["image"]),
    }
    columns = ["case", "split", *[f"dice_{t}_clicks" for t in CLICKS], "auto_dice", "auto_hd95", "auto_asd",
               "auto_lesion_recall", "detector_dice", "floor_percentile", "floor_dice"]
    print_table(rows, columns)
    for name, value in speed.items():
        print(f"{name}: {value}")
    write_results(args.results, {"machine": machine(), "threads": args.threads, "model": str(args.model),
                                     "config": json.loads(json.dumps(model.config, default=lambda o: o.__dict__)),
                                     "rows": rows, "speed": speed, "mean_val_auto_dice": float(np.mean(
                                         [r["auto_dice"] for r in rows if r["split"] == "val"]))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
