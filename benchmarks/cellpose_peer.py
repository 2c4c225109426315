"""Cellpose 3 peer benchmark: train Cellpose FROM SCRATCH for a fixed wall-clock budget, score it on our val split.

Cellpose 3 is what users would pick instead of promptsam's nucleus model. Install it beside torch with
``.venv/bin/pip install -c constraints.txt "cellpose<4"`` (it pins numpy<2.1).

    .venv/bin/python benchmarks/cellpose_peer.py --minutes M [--threads T] [--run-dir DIR] [--eval-only]

1. loads the TRAIN split (promptsam.data.splits) of monuseg, dsb2018 and consep as ONE training set;
2. builds ``models.CellposeModel(gpu=False, pretrained_model=False, model_type=None, nchan=2)``: no weights
   are loaded and cellpose's download function is replaced by one that raises, so nothing is fetched;
3. trains with ``cellpose.train.train_seg`` inside a wall-clock budget of M minutes (see "Budget");
4. re-runs itself with --eval-only (a fresh process, so its peak RSS, VmHWM, is inference alone) to segment the
   VALIDATION split of each dataset into <stem>.labels.tif files in a temp folder, timing each image;
5. scores them with `promptsam.evaluation.evaluate_folders` against the labels in place, prints a table and
   writes benchmarks/results/cellpose_peer.json.

Choices (cellpose defaults unless stated):
- channels=[0, 0] (grey: cellpose averages R, G and B; second channel empty; nchan=2). This is what the
  cellpose docs tell users to do for H&E and for single-channel fluorescence; colour is not used.
- diameter: train_seg's default ``rescale=True`` rescales each training image so its median nucleus diameter
  (from its labels) becomes diam_mean=30 px, with random scale augmentation (scale_range 0.5). At evaluation
  each dataset is run at ONE diameter: the mean of cellpose's per-image diameters over that dataset's TRAIN
  labels (``--eval-diameter dataset``, what a user who knows their magnification would type);
  ``--eval-diameter global`` uses the model's own diam_labels (mean over all training images) instead.
  Validation labels are never used to pick a diameter.
- optimiser: train_seg's defaults, AdamW, learning_rate 0.005, weight_decay 1e-5, batch_size 8, bsize 224,
  min_train_masks 5, train_seg's warm-up/decay schedule; ``--sgd`` switches to the CLI recipe (SGD, lr 0.2).
  Augmentation: train_seg's own (random rotation, flip, scale and 224x224 crop).
- nimg_per_epoch=8 (one batch per "epoch"; images drawn at random, uniformly per image): on CPU one pass over
  the 112 images takes minutes, and train_seg's schedule is counted in epochs (10 warm-up epochs, LR halved
  over the last 50/100 epochs once n_epochs > 100/300), so short epochs keep its shape within the budget.
- network: the default CPnet (nbase 32-256). Training uses plain dense CPU kernels (mkldnn=False, faster
  here); inference uses CellposeModel's default (mkldnn when available). Eval thresholds are defaults:
  flow_threshold 0.4, cellprob_threshold 0.0, min_size 15, no test-time augmentation.

Budget: the clock starts before the training images are read. Loading, flow computation (done once, then
passed to train_seg as precomputed flows) and a timing probe (one warm-up and 3 timed batches, forward+backward,
no optimiser step, so it does not change the weights) are spent first; the rest is divided by the FASTEST probed
seconds per epoch to get n_epochs for ONE train_seg call. The fastest, not the mean: a probe taken while the
machine is busy once planned 98 batches that finished in half the budget; planning optimistically means training
runs until the deadline guard instead (at worst cutting the last LR decay epochs short, recorded). A forward
pre-hook stops training if it passes the budget by more than 2 % (e.g. when the CPU gets busier); the weights
are then saved as they are and `stopped_by_deadline` is recorded. The JSON records the actual wall and CPU
seconds of each phase.

Resume (``--resume``): an equal budget to promptsam's default (several CPU hours) does not fit one sitting, so it
can be spent in chunks: each chunk starts from the weights the previous one saved and runs one more train_seg
call of --minutes (so train_seg's warm-up and LR decay repeat per chunk, a deviation from one long call);
``total_cpu_seconds`` and ``chunks`` in train_record.json add the chunks up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("monuseg", "dsb2018", "consep")
TABLE_KEYS = ("pq", "aji", "dice", "dq", "sq")
CHANNELS = [0, 0]
MODEL_NAME = "cellpose_peer"
DEFAULT_RUN_DIR = Path("/tmp/cellpose_peer")
DEADLINE_GRACE = 0.02  # stop training if it runs this fraction past the budget
PROBE_BATCHES = 3  # timed after one untimed warm-up batch; the fastest is used (see "Budget")


class BudgetExceeded(RuntimeError):
    """Raised inside the network's forward pass once training has used up its wall-clock budget."""


def _limit_threads(threads: int) -> None:
    """Pin every thread pool cellpose touches (torch, OpenMP/MKL, numba, OpenCV) to `threads`."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def _offline_cellpose(run_dir: Path):
    """Import cellpose with its model folder inside `run_dir` and every download path disabled."""
    os.environ["CELLPOSE_LOCAL_MODELS_PATH"] = str(run_dir / "cellpose_models")
    import cellpose
    from cellpose import models, utils

    def _no_download(*args, **kwargs):
        raise RuntimeError(f"cellpose_peer: cellpose tried to download {args[:1]}; training is from scratch only")

    utils.download_url_to_file = _no_download
    utils.urlopen = _no_download
    models.cache_model_path = _no_download
    return cellpose, models


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (ru_maxrss; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _own_peak_rss_mb() -> float | None:
    """Peak RSS of this process image alone (VmHWM): unlike ru_maxrss, not inherited from the parent at fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _rgb(image):
    import numpy as np

    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 images, got {image.dtype}")
    return image


def load_split(root: Path, dataset: str, split: str) -> tuple[list[str], list, list]:
    """Return (names, RGB uint8 images, label maps) of one split of a dataset of ../shared/data."""
    from promptsam.data.splits import split_samples
    from promptsam.io import read_image, read_labels

    samples = split_samples(dataset, split, root=root)
    images = [_rgb(read_image(s.image)) for s in samples]
    labels = [read_labels(s.label).astype("int32") for s in samples]
    return [s.name for s in samples], images, labels


def dataset_diameters(root: Path) -> dict[str, float]:
    """Mean of cellpose's per-image median diameter over each dataset's TRAIN labels."""
    import numpy as np
    from cellpose import utils

    out = {}
    for ds in DATASETS:
        _, _, labels = load_split(root, ds, "train")
        out[ds] = float(np.mean([max(utils.diameters(lbl)[0], 5.0) for lbl in labels]))
    return out


def _probe_seconds_per_batch(net, images, flows, batch_size: int, scale_range: float) -> float:
    """Time forward+backward of train_seg-like batches (no optimiser step, so the weights stay untouched)."""
    import numpy as np
    import torch
    from cellpose import models, train, transforms, utils

    rng = np.random.default_rng(0)
    times = []
    net.train()
    for _ in range(1 + PROBE_BATCHES):
        t0 = time.perf_counter()
        inds = rng.choice(len(images), size=batch_size, replace=len(images) < batch_size)
        params = {**models.normalize_default, "normalize": True}
        imgs = train._reshape_norm(
            [images[i] for i in inds], channels=CHANNELS, channel_axis=-1, normalize_params=params
        )
        lbls = [flows[i][1:] for i in inds]
        diams = np.array([max(utils.diameters(flows[i][0])[0], 5.0) for i in inds])  # as train_seg computes them
        rsc = diams / net.diam_mean.item()
        imgi, lbl = transforms.random_rotate_and_resize(
            imgs, Y=lbls, rescale=rsc, scale_range=scale_range, xy=(224, 224)
        )[:2]
        y = net(torch.from_numpy(imgi).to(net.device))[0]
        loss = train._loss_fn_seg(lbl, y, net.device)
        loss.backward()
        net.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return float(np.min(times[1:]))


def run_training(args: argparse.Namespace, root: Path) -> dict:
    """Train from scratch within the budget, save the model under run_dir/models, return the training record."""
    import numpy as np
    import torch

    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    budget = args.minutes * 60.0
    _, models = _offline_cellpose(args.run_dir)
    from cellpose import dynamics, train

    phases: dict[str, dict] = {}

    def mark(name: str, t0: float, c0: float) -> tuple[float, float]:
        t1, c1 = time.perf_counter(), _cpu_seconds()
        phases[name] = {"wall_s": round(t1 - t0, 2), "cpu_s": round(c1 - c0, 2)}
        print(f"  {name}: {t1 - t0:.1f} s wall, {c1 - c0:.1f} s cpu (elapsed {t1 - t_start:.1f} s)", file=sys.stderr)
        return t1, c1

    images, labels, per_dataset = [], [], {}
    for ds in DATASETS:
        names, imgs, lbls = load_split(root, ds, "train")
        images += imgs
        labels += lbls
        per_dataset[ds] = len(names)
    t, c = mark("load", t_start, cpu_start)
    flows = dynamics.labels_to_flows(labels, device=torch.device("cpu"))
    t, c = mark("flows", t, c)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None, nchan=2, mkldnn=False)
    if model.pretrained_model:
        raise RuntimeError("cellpose_peer: a pretrained model was selected; refusing to continue")
    net = model.net
    args.run_dir.mkdir(parents=True, exist_ok=True)
    model_path = args.run_dir / "models" / MODEL_NAME
    previous = None
    if args.resume and model_path.is_file():  # continue the weights of an earlier budget chunk (see "Resume")
        previous = json.loads((args.run_dir / "train_record.json").read_text())
        net.load_model(str(model_path), device=torch.device("cpu"))
        done = previous.get("total_cpu_seconds", previous["cpu_seconds"])
        print(f"  resumed from {model_path} after {done:.0f} cpu-s", file=sys.stderr)
    scale_range = 0.5  # train_seg's value for rescale=True
    sec_per_batch = _probe_seconds_per_batch(net, images, flows, args.batch_size, scale_range)
    t, c = mark("probe", t, c)

    batches_per_epoch = math.ceil(args.nimg_per_epoch / args.batch_size)
    sec_per_epoch = sec_per_batch * batches_per_epoch
    remaining = budget - (time.perf_counter() - t_start)
    n_epochs = max(1, int(0.97 * remaining / sec_per_epoch))
    print(
        f"  probe: {sec_per_batch:.2f} s/batch -> n_epochs={n_epochs} for the remaining {remaining:.0f} s",
        file=sys.stderr,
    )

    deadline = t_start + budget * (1.0 + DEADLINE_GRACE)
    counter = {"batches": 0}

    def guard(module, inputs):
        if module.training:
            if time.perf_counter() > deadline:
                raise BudgetExceeded
            counter["batches"] += 1

    handle = net.register_forward_pre_hook(guard)
    stopped = False
    opt = {"learning_rate": 0.2, "SGD": True} if args.sgd else {"learning_rate": 0.005, "SGD": False}
    try:
        train.train_seg(
            net,
            train_data=images,
            train_labels=flows,
            channels=CHANNELS,
            channel_axis=-1,
            n_epochs=n_epochs,
            batch_size=args.batch_size,
            nimg_per_epoch=args.nimg_per_epoch,
            weight_decay=1e-5,
            rescale=True,
            save_path=str(args.run_dir),
            model_name=MODEL_NAME,
            save_every=10**9,
            **opt,
        )
    except BudgetExceeded:
        stopped = True
        (args.run_dir / "models").mkdir(parents=True, exist_ok=True)
        net.save_model(str(model_path))
    finally:
        handle.remove()
    mark("train_seg", t, c)
    train_s = time.perf_counter() - t_start
    cpu_s = _cpu_seconds() - cpu_start
    print(f"  training total: {train_s:.1f} s wall for a budget of {budget:.0f} s", file=sys.stderr)
    chunks = (previous or {}).get("chunks", [previous] if previous else []) + [
        {"seconds": round(train_s, 1), "cpu_seconds": round(cpu_s, 1), "batches": counter["batches"],
         "threads": args.threads, "stopped_by_deadline": stopped}
    ]
    return {
        "chunks": [{k: c[k] for k in ("seconds", "cpu_seconds", "batches", "threads", "stopped_by_deadline")}
                   for c in chunks],
        "total_seconds": round(sum(c["seconds"] for c in chunks), 1),
        "total_cpu_seconds": round(sum(c["cpu_seconds"] for c in chunks), 1),
        "total_batches": sum(c["batches"] for c in chunks),
        "cellpose_version": _dist_version("cellpose"),
        "model_path": str(model_path),
        "budget_s": budget,
        "seconds": round(train_s, 1),
        "cpu_seconds": round(cpu_s, 1),
        "phases": phases,
        "threads": args.threads,
        "n_train": len(images),
        "n_train_per_dataset": per_dataset,
        "probe_seconds_per_batch": round(sec_per_batch, 3),
        "n_epochs_planned": n_epochs,
        "epochs_completed": counter["batches"] // batches_per_epoch,
        "batches": counter["batches"],
        "stopped_by_deadline": stopped,
        "nimg_per_epoch": args.nimg_per_epoch,
        "batch_size": args.batch_size,
        "optimizer": "SGD momentum 0.9" if args.sgd else "AdamW",
        "learning_rate": opt["learning_rate"],
        "weight_decay": 1e-5,
        "channels": CHANNELS,
        "nchan": 2,
        "diam_mean": float(net.diam_mean.item()),
        "diam_labels": float(net.diam_labels.item()),
        "rescale": True,
        "seed": args.seed,
        "peak_rss_mb_training": round(_own_peak_rss_mb() or _peak_rss_mb(), 1),
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def run_eval(args: argparse.Namespace, root: Path, record: dict) -> dict:
    """Segment and score the val split of every dataset with the trained model; return per-dataset results."""
    import numpy as np

    _, models = _offline_cellpose(args.run_dir)
    from promptsam.evaluation import evaluate_folders, summarize
    from promptsam.io import write_labels

    model_path = Path(record["model_path"])
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no trained model (run without --eval-only first)")
    model = models.CellposeModel(gpu=False, pretrained_model=str(model_path), nchan=2)
    diameters = dataset_diameters(root) if args.eval_diameter == "dataset" else {}
    out = {}
    for ds in DATASETS:
        names, images, _ = load_split(root, ds, "val")
        diameter = diameters.get(ds, float(model.diam_labels))
        seconds, big = [], []
        with tempfile.TemporaryDirectory(prefix=f"cellpose_peer_{ds}_") as tmp:
            for name, image in zip(names, images, strict=True):
                t0 = time.perf_counter()
                masks = model.eval(image, channels=CHANNELS, channel_axis=-1, diameter=diameter)[0]
                dt = time.perf_counter() - t0
                seconds.append(dt)
                if image.shape[:2] == (1000, 1000):
                    big.append(dt)
                write_labels(Path(tmp) / f"{name}.labels.tif", np.asarray(masks, dtype=np.uint32))
            rows = evaluate_folders(tmp, root / ds / "train", names=names)
        out[ds] = {
            "diameter": round(diameter, 2),
            "n_val": len(rows),
            "mean": summarize(rows)["2d"],
            "seconds_per_image": round(float(np.mean(seconds)), 3),
            "seconds_per_1000x1000_image": round(float(np.mean(big)), 3) if big else None,
            "rows": rows,
        }
        print(
            f"  {ds}: {len(rows)} val images, {np.mean(seconds):.2f} s/image, diameter {diameter:.1f}", file=sys.stderr
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Train (unless --eval-only), then evaluate in a fresh process, print the table and write the JSON."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock training budget (required to train)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP/numba/OpenCV threads")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="where the model is saved")
    parser.add_argument("--eval-only", action="store_true", help="score the model already in --run-dir")
    parser.add_argument("--data", type=Path, default=None, help="data root (default: ../shared/data)")
    parser.add_argument("--eval-diameter", choices=("dataset", "global"), default="dataset")
    parser.add_argument("--nimg-per-epoch", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sgd", action="store_true", help="cellpose CLI recipe: SGD, lr 0.2 (default AdamW 0.005)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-only", action="store_true", help="stop after training (a budget chunk)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the model in --run-dir for another --minutes (budget spread over sessions)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cellpose_peer.json")
    args = parser.parse_args(argv)
    if args.minutes is None and not args.eval_only:
        parser.error("--minutes is required unless --eval-only")
    _limit_threads(args.threads)
    args.run_dir = args.run_dir.resolve()

    from promptsam.data.splits import default_data_root

    root = (args.data or default_data_root()).resolve()
    if not root.is_dir():
        print(f"cellpose_peer: data not found at {root}", file=sys.stderr)
        return 2
    record_path = args.run_dir / "train_record.json"
    if not args.eval_only:
        record = run_training(args, root)
        record["command"] = "python benchmarks/cellpose_peer.py " + shlex.join(argv)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        if args.train_only:
            return 0
        # evaluate in a fresh process so its peak memory is that of inference alone
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--eval-only"]
        return subprocess.call(cmd)

    if not record_path.is_file():
        print(f"cellpose_peer: {record_path} not found (train first)", file=sys.stderr)
        return 2
    record = json.loads(record_path.read_text())
    datasets = run_eval(args, root, record)

    import torch

    results = {
        "benchmark": "Cellpose 3 trained from scratch (train.train_seg) on the promptsam train split",
        "command": record.get("command", ""),
        "eval_command": "python benchmarks/cellpose_peer.py " + shlex.join(argv),
        "split": "validation split of promptsam.data.splits (docs/data.md); trained on the train split only",
        "cellpose_version": record["cellpose_version"],
        "torch": torch.__version__,
        "threads": args.threads,
        "training": record,
        "eval": {
            "channels": CHANNELS,
            "eval_diameter": args.eval_diameter,
            "flow_threshold": 0.4,
            "cellprob_threshold": 0.0,
            "min_size": 15,
            "augment": False,
            "peak_rss_mb_inference": round(_own_peak_rss_mb() or _peak_rss_mb(), 1),
            "ru_maxrss_mb": round(_peak_rss_mb(), 1),
        },
        "datasets": datasets,
    }
    header = "| dataset | val images | PQ | AJI | Dice | DQ | SQ | diameter | s/image |"
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for ds, res in datasets.items():
        cells = " | ".join(f"{res['mean'][k]:.3f}" for k in TABLE_KEYS)
        lines.append(f"| {ds} | {res['n_val']} | {cells} | {res['diameter']:.1f} | {res['seconds_per_image']:.2f} |")
    print("\n".join(lines))
    mono = datasets["monuseg"]["seconds_per_1000x1000_image"]
    print(
        f"training: {record['seconds']:.0f} s wall ({record['cpu_seconds']:.0f} s cpu) of a {record['budget_s']:.0f} s"
        f" budget, {record['epochs_completed']} epochs x {record['nimg_per_epoch']} images, {args.threads} thread(s)"
        f" (all chunks: {record.get('total_cpu_seconds', record['cpu_seconds']) / 60:.0f} cpu-min);"
        f" MoNuSeg 1000x1000: {mono} s/image; inference peak RSS {results['eval']['peak_rss_mb_inference']:.0f} MB"
    )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import save_json

    save_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
