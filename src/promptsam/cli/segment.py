"""`promptsam segment`: every nucleus of each input image, written as label TIFF, class TIFF, QuPath GeoJSON,
CSV of measurements and an overlay PNG; with a 3D model (M-SAM), the lesions of each NIfTI volume as a mask with
the input's geometry and a CSV of lesions."""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

from promptsam.errors import PromptSAMError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
VOLUME_SUFFIXES = (".nii.gz", ".nii")
LESION_COLUMNS = ("id", "voxels", "volume_mm3", "centroid_x", "centroid_y", "centroid_z", "mean_probability")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("segment", help="segment nuclei in images (files, folders or globs)")
    parser.add_argument("inputs", nargs="+", help="image files, folders of images, or glob patterns")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--model", default="default", help="shipped model name or model file (default: default)")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, mps")
    parser.add_argument("--precision", default=None, help="fp32, bf16 or auto (default: the model's setting)")
    parser.add_argument("--fast", action="store_true",
                        help="2D: one prompter pass instead of four flipped ones (~1.3x faster, slightly fewer nuclei "
                             "found on H&E)")
    parser.add_argument("--no-geojson", action="store_true", help="skip the QuPath GeoJSON")
    parser.add_argument("--no-overlay", action="store_true", help="skip the overlay PNG")
    parser.add_argument("--clicks", default=None,
                        help="3D: JSON file of clicks [{x, y, z, label}] (interactive mode; one input volume)")
    parser.add_argument("--rounds", type=int, default=None, help="3D automatic mode: refinement rounds")
    parser.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns -> sorted unique image paths; unknown names are errors."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES + VOLUME_SUFFIXES))
            if not images:
                raise PromptSAMError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)})")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            hits = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not hits:
                raise PromptSAMError(f"{item}: no such file, folder or matching image")
            found += hits
    return list(dict.fromkeys(found))


def stem(path: Path) -> str:
    """File name without its image suffix."""
    name = path.name
    for suffix in VOLUME_SUFFIXES + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def write_outputs(out: Path, name: str, image, result, *, geojson: bool = True, overlay: bool = True) -> list[Path]:
    """Write the per-image files of a NucleusSegmentation; each file appears complete or not at all."""
    from promptsam.io.geojson import write_geojson
    from promptsam.io.images import write_labels
    from promptsam.io.measurements import measure_instances, write_csv
    from promptsam.io.overlay import write_overlay

    written = [write_labels(out / f"{name}.labels.tif", result.labels)]
    names = {i + 1: n for i, n in enumerate(result.class_names)}
    scores = {i + 1: float(s) for i, s in enumerate(result.scores)}  # instance id -> predicted IoU
    if result.classes is not None:
        written.append(write_labels(out / f"{name}.classes.tif", result.classes))
    if geojson:
        written.append(write_geojson(out / f"{name}.geojson", result.labels, classes=result.classes,
                                     class_names=names, scores=scores))
    rows = measure_instances(result.labels, classes=result.classes, scores=scores)
    written.append(write_csv(out / f"{name}.csv", rows))
    if overlay:
        write_overlay(out / f"{name}.overlay.png", image, result.labels)
        written.append(out / f"{name}.overlay.png")
    return written


def write_volume_outputs(out: Path, name: str, volume, result) -> list[Path]:
    """Write `<name>.mask.nii.gz` (input geometry) and `<name>.lesions.csv` (one row per connected lesion)."""
    import numpy as np
    from scipy import ndimage

    from promptsam.io.measurements import write_csv
    from promptsam.io.volumes import write_volume
    from promptsam.metrics.volume import connected_lesions

    written = [write_volume(out / f"{name}.mask.nii.gz", result.mask, volume)]
    labels, n = connected_lesions(result.mask)
    voxel_mm3 = float(np.prod(volume.spacing))
    rows = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[box] == k
        centre = ndimage.center_of_mass(inside)
        rows.append({
            "id": k, "voxels": int(inside.sum()), "volume_mm3": round(inside.sum() * voxel_mm3, 2),
            "centroid_x": round(box[0].start + centre[0], 2), "centroid_y": round(box[1].start + centre[1], 2),
            "centroid_z": round(box[2].start + centre[2], 2),
            "mean_probability": round(float(result.probability[box][inside].mean()), 4),
        })
    written.append(write_csv(out / f"{name}.lesions.csv", rows, columns=LESION_COLUMNS))
    return written


def _segment_volume(model, path: Path, out: Path, args: argparse.Namespace) -> str:
    from promptsam.io.volumes import read_volume
    from promptsam.methods.msam import read_clicks

    volume = read_volume(path)
    clicks = read_clicks(args.clicks) if args.clicks else None
    result = model.segment(volume, clicks=clicks, rounds=args.rounds)
    write_volume_outputs(out, stem(path), volume, result)
    mode = result.regions[0]["mode"] if result.regions else "automatic"
    return f"{int(result.mask.sum())} lesion voxels in {len(result.regions)} region(s), {mode} mode"


def _segment_image(model, path: Path, out: Path, args: argparse.Namespace) -> str:
    from promptsam.io.images import read_image

    image = read_image(path)
    result = model.segment(image, fast=args.fast)
    write_outputs(out, stem(path), image, result, geojson=not args.no_geojson, overlay=not args.no_overlay)
    return f"{int(result.labels.max())} nuclei"


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from promptsam.methods.msam import MSAM
    from promptsam.pretrained import load_model

    paths = expand_inputs(args.inputs)
    model = load_model(args.model, device=args.device)
    if isinstance(model, MSAM):
        flat = [p for p in paths if not p.name.lower().endswith(VOLUME_SUFFIXES)]
        if flat:
            raise PromptSAMError(f"{flat[0]}: the M-SAM model segments NIfTI volumes (.nii, .nii.gz), not 2D images")
        if args.clicks and len(paths) != 1:
            raise PromptSAMError(f"--clicks applies to one input volume; got {len(paths)}")
        segment_one = _segment_volume
    else:
        if args.precision:
            model.config = replace(model.config, inference=replace(model.config.inference, precision=args.precision))
        segment_one = _segment_image
    out, failures = Path(args.output), 0
    for path in paths:  # one bad input is reported on one line; the others are still segmented
        t0 = time.perf_counter()
        try:
            summary = segment_one(model, path, out, args)
        except PromptSAMError as err:
            failures += 1
            print(f"promptsam segment: error: {err}", file=sys.stderr)
            continue
        print(f"{path}: {summary} in {time.perf_counter() - t0:.1f} s -> {out}/{stem(path)}.*")
    return 2 if failures else 0
