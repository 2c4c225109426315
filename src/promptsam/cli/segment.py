"""`promptsam segment`: every nucleus of each input image, written as label TIFF, class TIFF, QuPath GeoJSON,
CSV of measurements and an overlay PNG; with a 3D model (M-SAM), the lesions of each NIfTI volume as a mask with
the input's geometry and a CSV of lesions."""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path
from typing import Any

from promptsam.errors import PromptSAMError

# what io.images reads whole, then the slide formats of io.slides (OpenSlide's last); compound suffixes first for `stem`
IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".btf", ".tf8", ".svs",
                  ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
LARGE_PIXELS = 4096 * 4096  # images above this are segmented in blocks (memory), like whole-slide images
DEFAULT_BLOCK, DEFAULT_HALO = 1024, 64  # as inference.large_image (not imported here: the CLI starts fast)
VOLUME_SUFFIXES = (".nii.gz", ".nii")
LESION_COLUMNS = ("id", "voxels", "volume_mm3", "centroid_x", "centroid_y", "centroid_z", "mean_probability")
# the prompter's settings that only change how its outputs are decoded (the rest is fixed by the weights)
PROMPTER_SETTINGS = ("nms_radius", "nms_diameters", "mask_filter", "mask_filter_logit", "min_foreground",
                     "test_time_flips", "centring_steps")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("segment", help="segment nuclei in images (files, folders or globs)")
    parser.add_argument("inputs", nargs="+", help="image files, folders of images, or glob patterns")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--model", default="default", help="shipped model name or model file (default: default)")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, mps")
    parser.add_argument("--precision", default=None, help="fp32, bf16 or auto (default: the model's setting)")
    parser.add_argument("--fast", action="store_true",
                        help="2D: one prompter pass instead of four flipped ones, for models with test-time flips "
                             "(the default model has them off)")
    parser.add_argument("--points", default=None, metavar="PATH",
                        help="2D: SAM draws a nucleus at each of these points instead of the prompter's: a CSV (x,y or "
                             "centroid_x,centroid_y columns, optional class), a GeoJSON of points (QuPath, with their "
                             "classification) or a label image (one point per instance), in level-0 pixels; a file "
                             "for one input image, or a folder of <stem>.csv|.geojson|.tif; slides: only blocks with "
                             "points are segmented")
    parser.add_argument("--diameter", type=float, default=None, metavar="PX",
                        help="2D: typical nucleus diameter in (level-0) pixels, as Cellpose's; sets SAM's "
                             "magnification instead of estimating it per image (per block on slides)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="2D: change an inference setting of the model for this run, e.g. --set "
                             "inference.nucleus_diameter=36 (any inference.* key, or the prompter's "
                             + ", ".join(PROMPTER_SETTINGS) + "); repeatable")
    parser.add_argument("--block-size", type=int, default=None,
                        help="2D: segment in blocks of this many pixels (with a halo, no seams); default: blocks of "
                             f"{DEFAULT_BLOCK} for slides and images over {LARGE_PIXELS // 10**6} MP, else one pass")
    parser.add_argument("--halo", type=int, default=None,
                        help=f"2D blocks: context pixels read around each block (default {DEFAULT_HALO}; more than any "
                             "nucleus radius at 40x)")
    parser.add_argument("--workers", type=int, default=None,
                        help="2D blocks: segment blocks in this many local processes (CPU threads shared among them)")
    parser.add_argument("--dask", default=None, metavar="ADDRESS",
                        help="2D blocks: send blocks to the workers of this dask.distributed scheduler (e.g. "
                             "tcp://host:8786; needs `pip install distributed`; a model file must be at the same path "
                             "on the workers)")
    parser.add_argument("--all-blocks", action="store_true",
                        help="2D blocks: also segment blocks the thumbnail shows no tissue in")
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


def _big_tiff(path: Path) -> bool:
    """Whether a TIFF's first image holds more than LARGE_PIXELS pixels (read from its header only)."""
    import tifffile

    from promptsam.io.images import TIFF_SUFFIXES

    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            sizes = dict(zip(series.axes, series.shape, strict=True))
    except Exception:  # noqa: BLE001 - read_image reports unreadable files
        return False
    return sizes.get("Y", 0) * sizes.get("X", 0) > LARGE_PIXELS


def write_slide_outputs(out: Path, name: str, result, labels_path: Path, classes_path: Path | None, *,
                        geojson: bool = True, overlay: bool = True) -> list[Path]:
    """Write the per-image files of a block-wise segmentation: tiled BigTIFF label (and class) maps from the
    memory-mapped ones, GeoJSON and CSV streamed block by block, and an overlay of the thumbnail."""
    import numpy as np
    import tifffile

    from promptsam.inference.large_image import block_features, block_measurements
    from promptsam.io.atomic import atomic_path
    from promptsam.io.geojson import write_features
    from promptsam.io.measurements import write_csv
    from promptsam.io.overlay import write_overlay

    written = []
    for source, suffix in ((labels_path, "labels"), (classes_path, "classes")):
        if source is None:
            continue
        data = np.load(source, mmap_mode="r")
        with atomic_path(out / f"{name}.{suffix}.tif") as tmp:
            tifffile.imwrite(tmp, data, bigtiff=True, tile=(512, 512), compression="zlib")
        written.append(out / f"{name}.{suffix}.tif")
    names = {i + 1: n for i, n in enumerate(result.class_names)}
    if geojson:
        written.append(write_features(out / f"{name}.geojson", block_features(result, class_names=names)))
    written.append(write_csv(out / f"{name}.csv", block_measurements(result)))
    if overlay:
        thumb, step = result.thumbnail, max(1, round(result.thumbnail_factor))
        small = np.asarray(result.labels[::step, ::step])[: thumb.shape[0], : thumb.shape[1]]
        write_overlay(out / f"{name}.overlay.png", thumb[: small.shape[0], : small.shape[1]], small)
        written.append(out / f"{name}.overlay.png")
    return written


def _segment_slide(model, path: Path, slide, out: Path, args: argparse.Namespace, prompts: tuple = (None, None),
                   points_path: Path | None = None) -> str:
    """Block-wise segmentation of a large image into memory-mapped maps beside the outputs (removed afterwards);
    `prompts` are given (points, classes) in level-0 pixels, read from `points_path`.

    Finished blocks are kept in `OUT/.<stem>.blocks/` until the outputs are written, so running the same command
    again after an interruption segments only the blocks still missing.
    """
    import hashlib
    import shutil
    import tempfile

    import numpy as np
    from tqdm import tqdm

    from promptsam.inference.large_image import BlockCache, segment_slide

    out.mkdir(parents=True, exist_ok=True)
    h, w = slide.shape
    typed = model.config.prompter.num_classes > 1
    block, halo = args.block_size or DEFAULT_BLOCK, DEFAULT_HALO if args.halo is None else args.halo
    model_file = Path(args.model)
    manifest = {"image": str(path.resolve()), "bytes": path.stat().st_size, "mtime": path.stat().st_mtime_ns,
                "shape": list(slide.shape), "block": block, "halo": halo, "fast": args.fast,
                "tissue": not args.all_blocks, "model": args.model, "precision": args.precision,
                "model_mtime": model_file.stat().st_mtime_ns if model_file.is_file() else None,
                "points": None if points_path is None else hashlib.sha256(points_path.read_bytes()).hexdigest(),
                "diameter": args.diameter, "settings": list(args.set)}
    cache = BlockCache(out / f".{stem(path)}.blocks", manifest)
    if len(cache):
        print(f"{path}: resuming, {len(cache)} blocks already done", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=f".{stem(path)}.", dir=out) as tmp:
        labels_path = Path(tmp) / "labels.npy"
        labels = np.lib.format.open_memmap(labels_path, mode="w+", dtype=np.uint32, shape=(h, w))
        classes_path = Path(tmp) / "classes.npy" if typed else None
        classes = (np.lib.format.open_memmap(classes_path, mode="w+", dtype=np.uint8, shape=(h, w))
                   if typed else None)
        result = segment_slide(
            model, slide, block=block, halo=halo, fast=args.fast, tissue=not args.all_blocks,
            labels=labels, classes=classes,
            progress=lambda it: tqdm(it, desc=path.name, unit="block", disable=not sys.stderr.isatty()),
            executor=args.executor, worker_model=None if args.precision or args.set else args.model, cache=cache,
            points=prompts[0], point_classes=prompts[1],
            scale=None if args.diameter is None else model.scale_for_diameter(args.diameter))
        write_slide_outputs(out, stem(path), result, labels_path, classes_path,
                            geojson=not args.no_geojson, overlay=not args.no_overlay)
        summary = (f"{result.count} nuclei in {len(result.blocks)} blocks of {block} px "
                   f"({result.skipped} without {'tissue' if points_path is None else 'points'} skipped), "
                   f"median {_magnification(model, result.scale)}")
        del labels, classes, result  # release the memory maps before their folder is removed
    shutil.rmtree(cache.folder)  # the outputs are complete: the finished blocks are no longer needed
    return summary


def _segment_image(model, path: Path, out: Path, args: argparse.Namespace) -> str:
    from promptsam.io.images import read_image
    from promptsam.io.points import read_prompts
    from promptsam.io.slides import OPENSLIDE_SUFFIXES, open_slide

    points_path = _points_file(args.points, path) if args.points else None

    def given(shape: tuple[int, int]) -> tuple:
        """The points file's points and types for an image of `shape`, or (None, None)."""
        if points_path is None:
            return None, None
        return read_prompts(points_path, shape=shape, class_names=model.config.class_names)

    if path.name.lower().endswith((".svs", *OPENSLIDE_SUFFIXES)) or args.block_size or _big_tiff(path):
        with open_slide(path) as slide:
            return _segment_slide(model, path, slide, out, args, given(slide.shape), points_path)
    image = read_image(path)
    points, types = given(image.shape[:2])
    result = model.segment(image, fast=args.fast, points=points, point_classes=types, diameter=args.diameter)
    write_outputs(out, stem(path), image, result, geojson=not args.no_geojson, overlay=not args.no_overlay)
    return f"{int(result.labels.max())} nuclei, {_magnification(model, result.scale)}"


def _magnification(model, scale: float) -> str:
    """SAM's magnification, and the nucleus diameter it stands for (what --diameter would set) when the model has a
    diameter target."""
    target = model.config.inference.nucleus_diameter
    return f"magnification {scale:.2f}" + (f" (for nuclei ~{target / scale:.0f} px across)" if target else "")


def with_settings(config: Any, items: list[str]) -> Any:
    """A PromptNucSeg config with `--set KEY=VALUE` items applied: inference.* and the prompter's decoding settings
    only (each checked by name here, by type and range when the config is built); anything else fails on one line."""
    from promptsam.config import apply_overrides, check_setting, from_dict, parse_settings, to_dict

    overrides = parse_settings(items)
    for key in overrides:
        section, _, name = key.partition(".")
        if not (section == "inference" or (section == "prompter" and name in PROMPTER_SETTINGS)):
            raise PromptSAMError(f"--set {key}: only inference.* and prompter.{{{','.join(PROMPTER_SETTINGS)}}} change "
                                 "at segment time; the rest is fixed by the model's weights")
        check_setting(type(config), key)
    return from_dict(type(config), apply_overrides(to_dict(config), overrides), where="--set")


def _points_file(points: str, image: Path) -> Path:
    """The points file given for `image`: the file itself, or the image's own file in a folder of them."""
    from promptsam.io.points import find_points_file

    return find_points_file(points, stem(image), image=image) if Path(points).is_dir() else Path(points)


def run(args: argparse.Namespace) -> int:
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
        if args.points:
            raise PromptSAMError(f"--points {args.points}: nucleus points are for 2D models; 3D models take --clicks")
        if args.diameter is not None:
            raise PromptSAMError(f"--diameter {args.diameter:g}: a nucleus diameter is for 2D models; 3D volumes are "
                                 "resampled to the model's voxel spacing")
        if args.set:
            raise PromptSAMError(f"--set {args.set[0]}: segment-time settings are for 2D models")
        segment_one = _segment_volume
    else:
        if args.points and not Path(args.points).is_dir() and len(paths) != 1:
            raise PromptSAMError(f"--points {args.points}: a points file applies to one input image; got {len(paths)} "
                                 "(give a folder of <stem>.csv|.geojson|.tif files instead)")
        settings = [*args.set, *([f"inference.precision={args.precision}"] if args.precision else [])]
        if settings:
            model.config = with_settings(model.config, settings)
        if args.diameter is not None:
            try:
                model.scale_for_diameter(args.diameter)  # a bad diameter fails once, before any input is read
            except PromptSAMError as err:
                raise PromptSAMError(f"--diameter: {err}") from None
        segment_one = _segment_image
    out, failures = Path(args.output), 0
    from promptsam.inference.large_image import block_executor

    with block_executor(workers=args.workers, scheduler=args.dask) as args.executor:
        for path in paths:  # one bad input is reported on one line; the others are still segmented
            failures += _segment_logged(segment_one, model, path, out, args)
    return 2 if failures else 0


def _segment_logged(segment_one, model, path: Path, out: Path, args: argparse.Namespace) -> int:
    """Segment one input and print its summary line, or its error on one line; returns the number of failures."""
    t0 = time.perf_counter()
    try:
        summary = segment_one(model, path, out, args)
    except PromptSAMError as err:
        print(f"promptsam segment: error: {err}", file=sys.stderr)
        return 1
    print(f"{path}: {summary} in {time.perf_counter() - t0:.1f} s -> {out}/{stem(path)}.*")
    return 0

