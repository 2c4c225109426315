"""Nuclei of images too large for one pass (whole-slide images, big mosaics): blocks with a halo, no seams.

    slide -> tissue mask on a thumbnail -> blocks touching tissue
          -> per block: read core + halo, segment it (SAM's magnification read off the block, as for one image),
             keep the nuclei whose centroid lies in the core
          -> write them into one label map under new ids, never over a nucleus an earlier block wrote

Each nucleus belongs to exactly one block (the one holding its centroid) and is drawn from a region that contains
it whole as long as its radius is below the halo, so nothing is cut or doubled at block borders (the seam errors
users report from tile-by-tile Cellpose runs). The label map may be a `numpy.memmap`, so only one block's pixels
are in memory at a time; `block_features` / `block_measurements` then stream GeoJSON and CSV rows block by block.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from promptsam.errors import PromptSAMError
from promptsam.io.atomic import atomic_path
from promptsam.io.slides import Slide

DEFAULT_BLOCK = 1024  # core side, level-0 pixels: ~1.3x the pixels of a 1000x1000 image with the default halo
DEFAULT_HALO = 64  # level-0 pixels around each core: above any nucleus radius at 40x (16 µm at 0.25 µm/px)


@dataclass(frozen=True)
class Block:
    """One block of a large image: its core (owned pixels) and the region read around it, (y0, x0, y1, x1)."""

    core: tuple[int, int, int, int]
    region: tuple[int, int, int, int]


def plan_blocks(shape: tuple[int, int], *, block: int = DEFAULT_BLOCK, halo: int = DEFAULT_HALO) -> list[Block]:
    """Cores tiling an (H, W) image exactly once, in raster order, each grown by `halo` (clipped to the image)."""
    if block < 1 or halo < 0:
        raise ValueError(f"block must be >= 1 and halo >= 0, got {block} and {halo}")
    h, w = shape
    blocks = []
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            y1, x1 = min(y0 + block, h), min(x0 + block, w)
            blocks.append(Block((y0, x0, y1, x1), (max(y0 - halo, 0), max(x0 - halo, 0), min(y1 + halo, h),
                                                   min(x1 + halo, w))))
    return blocks


def tissue_mask(thumbnail: np.ndarray) -> np.ndarray:
    """Where a thumbnail shows tissue or cells: Otsu on darkness and colour (brightfield) or brightness (dark field).

    Dilated by two thumbnail pixels; an image without contrast is all tissue (nothing is skipped by mistake).
    """
    from skimage.filters import threshold_otsu

    from promptsam.inference.classical import detect_modality

    img = to_uint8(thumbnail, intensity_window(thumbnail)).astype(np.float64)
    grey = img.mean(axis=-1) if img.ndim == 3 else img
    if np.ptp(grey) < 8:
        return np.ones(grey.shape, bool)
    fluorescence = detect_modality(img) == "fluorescence"
    signal = grey if fluorescence else 255.0 - grey
    if img.ndim == 3 and not fluorescence:
        signal = np.maximum(signal, img.max(axis=-1) - img.min(axis=-1))  # stained tissue is dark or coloured
    mask = signal > threshold_otsu(signal)
    return ndimage.binary_dilation(mask, iterations=2)


def tissue_blocks(blocks: list[Block], mask: np.ndarray, factor: float) -> list[Block]:
    """The blocks whose core touches the tissue mask (a thumbnail `factor` level-0 pixels per pixel)."""
    keep = []
    for b in blocks:
        y0, x0, y1, x1 = (int(v // factor) for v in b.core)
        if mask[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].any():
            keep.append(b)
    return keep


def to_uint8(region: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Region as the model's 8-bit input: uint8 as is, anything else through one intensity `window` for all blocks."""
    if region.dtype == np.uint8 or window is None:
        return region
    lo, hi = window
    return np.round(np.clip((region.astype(np.float32) - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def intensity_window(thumbnail: np.ndarray) -> tuple[float, float] | None:
    """The 0.1-99.9 percentile range of a non-8-bit image (from its thumbnail), as `to_rgb255` uses per image."""
    if thumbnail.dtype == np.uint8:
        return None
    lo, hi = np.percentile(np.asarray(thumbnail, np.float64), (0.1, 99.9))
    return float(lo), float(hi)


@dataclass
class SlideSegmentation:
    """Nuclei of a large image: label map (maybe on disk), class map, per-nucleus prompt data, block bookkeeping."""

    labels: np.ndarray  # (H, W) uint32, 0 = background; ids 1..N (an id may have lost all pixels to earlier ones)
    classes: np.ndarray | None  # (H, W) uint8 or None
    points: np.ndarray  # (N, 2) (x, y) level-0 prompt of nucleus i+1
    point_classes: np.ndarray  # (N,)
    scores: np.ndarray  # (N,) predicted IoU
    class_names: tuple[str, ...] = ()
    scale: float = 1.0  # median of the blocks' magnifications
    blocks: list[tuple[Block, int, int]] = field(default_factory=list)  # (block, first id, last id) per block done
    skipped: int = 0  # blocks without tissue
    thumbnail: np.ndarray | None = None  # the slide's thumbnail the tissue mask was read from (for overlays)
    thumbnail_factor: float = 1.0  # level-0 pixels per thumbnail pixel

    @property
    def count(self) -> int:
        return len(self.points)


@dataclass
class BlockResult:
    """The nuclei one block owns: its region's label map with only them (ids 1..k), their prompt data (level 0)."""

    labels: np.ndarray  # (rh, rw) uint32
    classes: np.ndarray | None  # (rh, rw) uint8 or None
    points: np.ndarray  # (k, 2) (x, y) level-0 prompts
    point_classes: np.ndarray  # (k,)
    scores: np.ndarray  # (k,)
    scale: float  # the block's magnification


def segment_block(model: Any, region: np.ndarray, block: Block, *, window: tuple[float, float] | None = None,
                  fast: bool = False, scale: float | None = None, points: np.ndarray | None = None,
                  point_classes: np.ndarray | None = None) -> BlockResult:
    """Segment the pixels of `block.region` and keep the nuclei whose centroid lies in the block's core; given
    `points` (x, y in the region's pixels) are drawn instead of the prompter's."""
    ry0, rx0, ry1, rx1 = block.region
    cy0, cx0, cy1, cx1 = block.core
    prompts = {} if points is None else {"points": points, "point_classes": point_classes}
    result = model.segment(to_uint8(region, window), fast=fast, scale=scale, **prompts)
    n = int(result.labels.max())
    if n:
        centres = np.array(ndimage.center_of_mass(np.ones_like(result.labels), result.labels,
                                                  np.arange(1, n + 1))).reshape(-1, 2)
        cy, cx = centres[:, 0] + ry0, centres[:, 1] + rx0
        own = (cy >= cy0) & (cy < cy1) & (cx >= cx0) & (cx < cx1)
    else:
        own = np.zeros(0, bool)
    kept = np.flatnonzero(own)
    lut = np.zeros(n + 1, np.uint32)
    lut[kept + 1] = np.arange(1, len(kept) + 1, dtype=np.uint32)
    local = lut[result.labels]
    classes = None if result.classes is None else np.where(local > 0, result.classes, 0).astype(np.uint8)
    return BlockResult(labels=local, classes=classes,
                       points=(result.points[kept] + np.array([rx0, ry0], np.float32)).astype(np.float32),
                       point_classes=result.point_classes[kept], scores=result.scores[kept], scale=float(result.scale))


_WORKER_MODELS: dict[str, Any] = {}


def _worker_block(model: Any, region: np.ndarray, block: Block, window: tuple[float, float] | None, fast: bool,
                  scale: float | None, points: np.ndarray | None = None,
                  point_classes: np.ndarray | None = None) -> BlockResult:
    """`segment_block` of one task, here or in a worker process or machine; a model given by name or path is loaded
    once there."""
    if isinstance(model, str):
        if model not in _WORKER_MODELS:
            from promptsam.pretrained import load_model

            _WORKER_MODELS[model] = load_model(model, device="auto")
        model = _WORKER_MODELS[model]
    return segment_block(model, region, block, window=window, fast=fast, scale=scale, points=points,
                         point_classes=point_classes)


def _init_worker(threads: int) -> None:
    """Start-up of a local worker process: its share of the CPU threads."""
    import torch

    torch.set_num_threads(threads)


@contextmanager
def block_executor(*, workers: int | None = None, scheduler: str | None = None) -> Iterator[Executor | None]:
    """Where `segment_slide` runs blocks: here (None), `workers` local processes, or a dask `scheduler`'s workers."""
    if workers is not None and scheduler:
        raise PromptSAMError("use local workers or a dask scheduler, not both")
    if scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise PromptSAMError("a dask scheduler needs dask.distributed: pip install distributed") from None
        try:
            client = Client(scheduler, timeout=30)
        except (OSError, TimeoutError) as err:
            raise PromptSAMError(f"{scheduler}: cannot reach the dask scheduler ({type(err).__name__})") from None
        with client:
            yield client.get_executor()
        return
    if not workers or workers <= 1:
        yield None
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(max(1, cpus // workers),)) as pool:
        yield pool


def _in_order(executor: Executor, tasks: Iterable[tuple], pending: int) -> Iterator[BlockResult]:
    """Results of `_worker_block(*task)` run on `executor`, in task order, at most `pending` submitted ahead (the
    tasks iterator reads each block's pixels only when it is submitted)."""
    queue: deque[Future] = deque()
    for task in tasks:
        queue.append(executor.submit(_worker_block, *task))
        if len(queue) >= pending:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()


class BlockCache:
    """Finished blocks of one slide run on disk (one .npz each), so an interrupted run resumes where it stopped.

    The folder holds a manifest of what defines the run (image shape, block plan, model, options); a folder written
    by a different run is emptied first, never mixed in.
    """

    def __init__(self, folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
        import json
        import shutil

        self.folder = Path(folder)
        text = json.dumps(manifest, sort_keys=True, default=str)
        stamp = self.folder / "manifest.json"
        if self.folder.is_dir() and (not stamp.is_file() or stamp.read_text() != text):
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            with atomic_path(stamp) as tmp:
                tmp.write_text(text)

    def _file(self, index: int) -> Path:
        return self.folder / f"block_{index:06d}.npz"

    def __contains__(self, index: int) -> bool:
        return self._file(index).is_file()

    def __len__(self) -> int:
        return len(list(self.folder.glob("block_*.npz")))

    def load(self, index: int) -> BlockResult:
        with np.load(self._file(index)) as data:
            return BlockResult(labels=data["labels"], classes=data["classes"] if "classes" in data else None,
                               points=data["points"], point_classes=data["point_classes"], scores=data["scores"],
                               scale=float(data["scale"]))

    def save(self, index: int, result: BlockResult) -> None:
        arrays = {"labels": result.labels, "points": result.points, "point_classes": result.point_classes,
                  "scores": result.scores, "scale": np.float64(result.scale)}
        if result.classes is not None:
            arrays["classes"] = result.classes
        with atomic_path(self._file(index)) as tmp, tmp.open("wb") as fh:
            np.savez_compressed(fh, **arrays)


class _Counted:
    """An iterator with a length, so progress bars know the total."""

    def __init__(self, items: Iterator[Any], count: int) -> None:
        self.items, self.count = items, count

    def __iter__(self) -> Iterator[Any]:
        return self.items

    def __len__(self) -> int:
        return self.count


def segment_slide(
    model: Any,
    slide: Slide,
    *,
    block: int = DEFAULT_BLOCK,
    halo: int = DEFAULT_HALO,
    fast: bool = False,
    tissue: bool = True,
    scale: float | None = None,
    labels: np.ndarray | None = None,
    classes: np.ndarray | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    executor: Executor | None = None,
    worker_model: str | None = None,
    pending: int = 8,
    cache: BlockCache | None = None,
    points: np.ndarray | None = None,
    point_classes: np.ndarray | None = None,
) -> SlideSegmentation:
    """Segment every nucleus of a `Slide` block by block with a PromptNucSeg model (see the module docstring).

    `labels` / `classes`: zero-filled (H, W) uint32 / uint8 outputs to write into (e.g. memmaps); allocated in memory
    when None. `tissue` skips blocks without tissue on the thumbnail; `scale` fixes SAM's magnification for every
    block (default: each block's own, as each image's in `segment`); `progress` wraps the iterable of finished blocks
    (e.g. tqdm). With an `executor` (`concurrent.futures` process pool, or `dask.distributed.Client.get_executor()`
    for many machines) the blocks read here are segmented there, at most `pending` ahead, and written here in order,
    so the result is the same as without; workers load `worker_model` (a model name or path) once each, or get the
    model object with every block when it is None. With a `cache`, finished blocks are kept there and blocks it
    already holds are not segmented again (resuming an interrupted run gives the same result). Given `points`
    ((N, 2) x, y in level-0 pixels, optional `point_classes`), SAM draws those nuclei instead of the prompter's, and
    only blocks whose region holds a point are segmented.
    """
    h, w = slide.shape
    if labels is None:
        labels = np.zeros((h, w), np.uint32)
    typed = model.config.prompter.num_classes > 1
    if typed and classes is None:
        classes = np.zeros((h, w), np.uint8)
    thumb, factor = slide.thumbnail()
    window = intensity_window(thumb)
    planned = plan_blocks((h, w), block=block, halo=halo)
    given = None if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    given_classes = None if point_classes is None else np.asarray(point_classes)
    held = {} if given is None else dict(zip(planned, points_in_regions(given, planned), strict=True))
    if given is not None:
        todo = [b for b in planned if len(held[b])]
    else:
        todo = tissue_blocks(planned, tissue_mask(thumb), factor) if tissue else planned

    def pixels(b: Block) -> np.ndarray:
        ry0, rx0, ry1, rx1 = b.region
        return slide.read(ry0, rx0, ry1 - ry0, rx1 - rx0)

    def prompts(b: Block) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The given points in `b`'s region, in its pixels, and their classes."""
        if given is None:
            return None, None
        local = given[held[b]] - np.array([b.region[1], b.region[0]], np.float32)
        return local, None if given_classes is None else given_classes[held[b]]

    index = {b: i for i, b in enumerate(planned)}
    missing = [b for b in todo if cache is None or index[b] not in cache]
    runner = model if executor is None else worker_model or model
    tasks = ((runner, pixels(b), b, window, fast, scale, *prompts(b)) for b in missing)
    computed: Iterator[BlockResult] = (_in_order(executor, tasks, max(1, pending)) if executor is not None
                                       else (_worker_block(*task) for task in tasks))

    def results() -> Iterator[BlockResult]:
        for b in todo:
            if cache is not None and index[b] in cache:
                yield cache.load(index[b])
                continue
            part = next(computed)
            if cache is not None:
                cache.save(index[b], part)
            yield part

    finished = _Counted(results(), len(todo))
    points, point_classes, scores, magnifications, done = [], [], [], [], []
    next_id = 1
    for b, part in zip(todo, progress(finished) if progress else finished, strict=True):
        ry0, rx0, ry1, rx1 = b.region
        k = len(part.points)
        local = np.where(part.labels > 0, part.labels + np.uint32(next_id - 1), 0).astype(np.uint32)
        target = labels[ry0:ry1, rx0:rx1]
        free = (local > 0) & (target == 0)
        target[free] = local[free]
        if classes is not None and part.classes is not None:
            classes[ry0:ry1, rx0:rx1][free] = part.classes[free]
        magnifications.append(part.scale)
        points.append(part.points)
        point_classes.append(part.point_classes)
        scores.append(part.scores)
        done.append((b, next_id, next_id + k - 1))
        next_id += k
    for out in (labels, classes):
        if hasattr(out, "flush"):  # memory maps reach the disk before the caller reads them back
            out.flush()
    return SlideSegmentation(
        labels=labels, classes=classes,
        points=np.concatenate(points) if points else np.zeros((0, 2), np.float32),
        point_classes=np.concatenate(point_classes) if point_classes else np.zeros(0, np.int64),
        scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
        class_names=tuple(getattr(model.config, "class_names", ())),
        scale=float(np.median(magnifications)) if magnifications else float(model.config.segmentor.scale), blocks=done,
        skipped=len(planned) - len(todo), thumbnail=thumb, thumbnail_factor=factor,
    )


def points_in_regions(points: np.ndarray, blocks: list[Block]) -> list[np.ndarray]:
    """Per block, the indices of the (x, y) points on a pixel of its region (rows found by binary search, so a
    slide's many points are not compared with every block)."""
    x, y = np.rint(points[:, 0]), np.rint(points[:, 1])
    order = np.argsort(y, kind="stable")
    rows = y[order]
    held = []
    for b in blocks:
        ry0, rx0, ry1, rx1 = b.region
        band = order[np.searchsorted(rows, ry0, "left") : np.searchsorted(rows, ry1, "left")]
        held.append(np.sort(band[(x[band] >= rx0) & (x[band] < rx1)]))
    return held


def owned_labels(result: SlideSegmentation, block: Block, first: int, last: int) -> np.ndarray:
    """The label map of `block`'s region holding only the nuclei that block owns (ids `first`..`last`)."""
    ry0, rx0, ry1, rx1 = block.region
    sub = np.asarray(result.labels[ry0:ry1, rx0:rx1])
    return np.where((sub >= first) & (sub <= last), sub, 0).astype(np.uint32)


def _per_block(result: SlideSegmentation, table: Callable[..., Any], **options: Any) -> Iterator[Any]:
    """`table(labels, classes=, scores=, offset=, **options)` over each block's own nuclei, in level-0 pixels."""
    scores = {i + 1: float(s) for i, s in enumerate(result.scores)}
    for b, first, last in result.blocks:
        if last < first:
            continue
        ry0, rx0, ry1, rx1 = b.region
        classes = None if result.classes is None else np.asarray(result.classes[ry0:ry1, rx0:rx1])
        yield from table(owned_labels(result, b, first, last), classes=classes, scores=scores, offset=(rx0, ry0),
                         **options)


def block_features(result: SlideSegmentation, **options: Any) -> Iterator[dict[str, Any]]:
    """GeoJSON features of every nucleus, block by block, in level-0 pixel coordinates (ids as in the label map)."""
    from promptsam.io.geojson import labels_to_features

    return _per_block(result, labels_to_features, **options)


def block_measurements(result: SlideSegmentation) -> Iterator[dict[str, Any]]:
    """CSV rows (`io.measurements.measure_instances`) of every nucleus, block by block, in level-0 pixels."""
    from promptsam.io.measurements import measure_instances

    return _per_block(result, measure_instances)


__all__ = ["Block", "BlockCache", "BlockResult", "SlideSegmentation", "block_executor", "block_features",
           "block_measurements", "plan_blocks", "segment_block", "segment_slide", "tissue_mask"]
