"""`promptsam demo`: the main job on a real sample image shipped by scikit-image (its IHC tissue image).

With the embedded default model (once trained and shipped): every nucleus segmented, all five outputs written,
exactly as `promptsam segment` does. Without it (or with `--random-sam`), prompts come from the classical
detector and SAM runs with RANDOM weights unless `--checkpoint` gives official ones: the pipeline, outputs and
timings are real, the masks of a random SAM are not meaningful, and the command says so.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="segment scikit-image's IHC tissue sample end to end")
    parser.add_argument("-o", "--output", default="out/demo", help="output folder (default: out/demo)")
    parser.add_argument("--random-sam", action="store_true", help="skip the default model: classical prompts + SAM")
    parser.add_argument("--model", default="vit_t", help="SAM architecture with --random-sam (default: vit_t)")
    parser.add_argument("--checkpoint", default=None, help="official SAM/MobileSAM weights (default: random)")
    parser.add_argument("--image-size", type=int, default=512, help="SAM input size with --random-sam")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from skimage import data

    from promptsam.pretrained import PRETRAINED

    image = data.immunohistochemistry()  # 512x512 RGB IHC, public domain sample in scikit-image
    out = Path(args.output)
    if "default" in PRETRAINED and not args.random_sam:
        from promptsam.cli.segment import write_outputs
        from promptsam.pretrained import load_model

        t0 = time.perf_counter()
        model = load_model("default", device=args.device)
        result = model.segment(image)
        written = write_outputs(out, "ihc", image, result)
        print(f"default model: {int(result.labels.max())} nuclei in {time.perf_counter() - t0:.1f} s; wrote "
              + ", ".join(str(p) for p in written))
        return 0
    return _random_sam(args, image, out)


def _random_sam(args: argparse.Namespace, image, out: Path) -> int:
    import numpy as np
    from skimage.measure import regionprops

    from promptsam.inference.classical import watershed_nuclei
    from promptsam.inference.merge import paint_instances
    from promptsam.inference.predictor import SamPredictor
    from promptsam.io.images import write_labels
    from promptsam.io.overlay import write_overlay
    from promptsam.models import build_sam

    t0 = time.perf_counter()
    prompts = watershed_nuclei(image)
    centroids = np.array([r.centroid[::-1] for r in regionprops(prompts)], np.float32).reshape(-1, 1, 2)
    model = build_sam(args.model, checkpoint=args.checkpoint, image_size=args.image_size)
    if args.checkpoint is None:
        print(f"NOTE: {args.model} runs with RANDOM weights (no --checkpoint, and no default promptsam model is "
              "shipped in this version): the pipeline and timings are real, the masks are not meaningful.")
    predictor = SamPredictor(model, device=args.device)
    predictor.set_image(image)
    pred = predictor.predict(points=centroids, point_labels=np.ones(centroids.shape[:2], np.int64))
    labels = paint_instances(pred.masks[:, 0], pred.iou[:, 0])
    write_labels(out / "ihc.labels.tif", labels)
    write_overlay(out / "ihc.overlay.png", image, labels)
    print(f"{len(centroids)} objects prompted, {labels.max()} painted, {time.perf_counter() - t0:.1f} s "
          f"on {predictor.device}; wrote {out / 'ihc.labels.tif'} and {out / 'ihc.overlay.png'}")
    return 0
