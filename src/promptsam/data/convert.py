"""Convert downloaded nucleus / lesion datasets into the uniform layout (see shared/data/README.md).

Output, under ``<dst>/<split>/``: ``images/<name>.png`` (RGB uint8), ``labels/<name>.tif`` (uint16/uint32
zlib TIFF, 0 = background, 1..N sequential), ``classes/<name>.tif`` (uint8, only when the source has types);
3D: ``images/<name>.nii.gz`` (float32) + ``labels/<name>.nii.gz`` (uint8, same affine).
Side tables in the split folder: ``tissues.csv`` (pannuke), ``classes.json`` (coco, geojson: class name -> id;
an existing table is extended, never renumbered), ``boxes/<name>.csv`` (coco box-only annotations).

Polygon sources (monuseg, coco polygons, geojson) follow the MoNuSeg convention: pixel centres inside the
polygon (``skimage.draw.polygon``, x = column, y = row), later objects overwrite earlier ones, an object split
into more pieces by overwrites keeps only its largest 8-connected piece, polygons with < 3 vertices are
skipped, and ids are then relabelled 1..N in source order.

Format notes: ``images=`` is the image folder for coco/geojson (default: beside the JSON); ``raw_types=True``
keeps the 7 raw CoNSeP types not the HoVer-Net merge (1 other, 2 inflammatory, 3 epithelial = 3+4,
4 spindle = 5+6+7); CPM-17 (no types) gets no class map. PanNuke cases are named ``fold<k>_<index>``.
COCO: ``iscrowd`` is ignored (every segmentation is one object); class id = category_id when all ids are in
1..255, else order of appearance; an image whose annotations are all bbox-only gets its image and
``boxes/<name>.csv`` but no label file (and is not returned). GeoJSON: ``nucleusGeometry`` is preferred over
``geometry`` for cells; when detections/cells are present, annotation objects (e.g. tissue regions) are
ignored; unclassified objects become class "Unclassified" when any object is classified, and no class map is
written when none is. nnU-Net: ``imagesTr/<case>_0000`` only, other channels are ignored.
"""

from __future__ import annotations

import csv
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as draw_polygon
from skimage.segmentation import relabel_sequential

from promptsam.errors import InputError
from promptsam.io.atomic import atomic_path
from promptsam.io.geojson import feature_class

__all__ = ["FORMATS", "convert", "rle_decode", "rle_encode"]

FORMATS: dict[str, str] = {
    "monuseg": "MoNuSeg/Kumar: Tissue_Images/*.tif + Annotations/*.xml (Aperio XML polygons)",
    "pannuke": "PanNuke fold: images.npy + masks.npy (+ types.npy) -> labels, 5 classes, tissues.csv",
    "consep": "CoNSeP / CPM-17: Images/*.png + Labels/*.mat (inst_map, inst_type/type_map; HoVer-Net merge)",
    "dsb2018": "DSB2018 stage1_train: <id>/images/<id>.png + <id>/masks/*.png (one mask per nucleus)",
    "coco": "COCO instance JSON (polygons, RLE; category_id -> classes; bbox-only -> boxes/<name>.csv)",
    "nnunet": "nnU-Net raw: imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz -> 3D layout",
    "geojson": "QuPath GeoJSON export(s) + image beside (or --images) -> labels, classes via classes.json",
}

_IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_CONSEP_MERGE = np.array([0, 1, 2, 3, 3, 4, 4, 4], np.uint8)  # HoVer-Net: 3+4 epithelial, 5+6+7 spindle
_Item = tuple[int, int, np.ndarray, int]  # (row0, col0, boolean crop mask, class id)


# ----------------------------------------------------------------------------------------------- helpers
def _why(exc: BaseException) -> str:
    """First line of an exception message (messages must stay one line)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _need_dir(path: Path, what: str) -> Path:
    """Return `path` if it is a folder, else raise InputError naming it."""
    if not path.is_dir():
        raise InputError(f"{path}: {what} folder not found")
    return path


def _subdir(root: Path, *names: str) -> Path | None:
    """The first existing child folder of `root` among `names` (case-insensitive)."""
    wanted = [n.lower() for n in names]
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    return next((children[n] for n in wanted if n in children), None)


def _files(src: Path, exts: tuple[str, ...]) -> list[Path]:
    """`src` itself if it is a file, else its visible files ending in one of `exts`, sorted."""
    if src.is_file():
        return [src]
    return sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(exts))


def _find_image(stem: str, folders: Iterable[Path | None], source: Path) -> Path:
    """The first `<folder>/<stem>.<image ext>` that exists; InputError naming `source` if none."""
    for folder in folders:
        for ext in _IMAGE_EXTS:
            for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}") if folder else ():
                if cand.is_file():
                    return cand
    raise InputError(f"{source}: no image file named {stem}.(png|tif|jpg) found for it")


def _to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """RGB uint8 from grey/RGB/RGBA (alpha dropped); floats in [0, 1] x255, ranges above 255 scaled to 255."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] in (1, 2):
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise InputError(f"{path}: image of shape {arr.shape} is not grey, RGB or RGBA")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    is_float = arr.dtype.kind == "f"
    arr = np.nan_to_num(arr.astype(np.float64))
    low, top = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if is_float and low >= 0.0 and top <= 1.0:  # float image in [0, 1]
        arr = arr * 255.0
    elif top > 255.0:  # 16-bit and other wide ranges: scale the maximum to 255
        arr = arr * (255.0 / top)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _read_array(path: Path) -> np.ndarray:
    """Read a 2D image/mask file with tifffile (TIFF) or PIL (anything else)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return np.asarray(tifffile.imread(path))
        with Image.open(path) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            elif im.mode in ("1", "LA"):
                im = im.convert("L")
            return np.asarray(im)
    except Exception as exc:
        raise InputError(f"{path}: cannot read image ({_why(exc)})") from None


def _read_rgb(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8."""
    return _to_rgb(_read_array(path), path)


def _relabel(lab: np.ndarray) -> np.ndarray:
    """Relabel an integer map to 0 + 1..N keeping id order; uint16, or uint32 beyond 65535 ids."""
    lab = np.asarray(lab)
    if lab.dtype.kind == "f":
        lab = np.rint(lab)
    lab = lab.astype(np.int64)
    out = relabel_sequential(lab)[0] if lab.any() else np.zeros(lab.shape, np.int64)
    return out.astype(np.uint16 if out.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def _write_tif(path: Path, arr: np.ndarray) -> None:
    """Write a zlib-compressed TIFF atomically."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, compression="zlib")


def _write_case(out: Path, name: str, image: np.ndarray, label: np.ndarray | None,
                classes: np.ndarray | None = None, *, source: Path) -> Path | None:
    """Write images/<name>.png, labels/<name>.tif (relabelled), classes/<name>.tif; return the label path."""
    if label is not None and image.shape[:2] != label.shape:
        raise InputError(f"{source}: label shape {label.shape} differs from image shape {image.shape[:2]}")
    if label is not None and label.size and label.min() < 0:
        raise InputError(f"{source}: negative label ids")
    _write_png(out / "images" / f"{name}.png", image)
    if label is None:
        return None
    if classes is not None:
        classes = np.where(label > 0, classes, 0).astype(np.uint8)
    label_path = out / "labels" / f"{name}.tif"
    _write_tif(label_path, _relabel(label))
    if classes is not None:
        _write_tif(out / "classes" / f"{name}.tif", classes)
    return label_path


def _write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _class_table(out: Path) -> dict[str, int]:
    """The existing classes.json of the split (name -> id), or an empty table."""
    path = out / "classes.json"
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())
        return {str(k): int(v) for k, v in table.items()}
    except Exception as exc:
        raise InputError(f"{path}: unreadable class table ({_why(exc)})") from None


def _class_id(table: dict[str, int], name: str) -> int:
    """The id of class `name`, appending it to `table` (order of appearance) if new."""
    if name not in table:
        table[name] = max(table.values(), default=0) + 1
        if table[name] > 255:
            raise InputError(f"more than 255 classes (at {name!r}); the class map is uint8")
    return table[name]


# --------------------------------------------------------------------------------- rasterising objects
def _polygon_item(parts: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]], shape: tuple[int, int],
                  cls: int = 0) -> _Item | None:
    """Rasterise polygon parts ((outer xy ring, [hole xy rings]), ...) into a bbox crop; None if empty."""
    parts = [(np.asarray(o, float), [np.asarray(h, float) for h in hs]) for o, hs in parts if len(o) >= 3]
    if not parts:
        return None
    xy = np.concatenate([o for o, _ in parts])
    if not np.isfinite(xy).all():
        return None
    r0, c0 = max(0, math.floor(xy[:, 1].min())), max(0, math.floor(xy[:, 0].min()))
    r1, c1 = min(shape[0], math.ceil(xy[:, 1].max()) + 1), min(shape[1], math.ceil(xy[:, 0].max()) + 1)
    if r1 <= r0 or c1 <= c0:
        return None
    mask = np.zeros((r1 - r0, c1 - c0), bool)
    for outer, holes in parts:
        part = np.zeros_like(mask)
        part[draw_polygon(outer[:, 1] - r0, outer[:, 0] - c0, mask.shape)] = True
        for hole in holes:
            if len(hole) >= 3:
                part[draw_polygon(hole[:, 1] - r0, hole[:, 0] - c0, mask.shape)] = False
        mask |= part
    return (r0, c0, mask, cls) if mask.any() else None


def _mask_item(mask: np.ndarray, cls: int = 0) -> _Item | None:
    """Crop a full-size boolean mask to its bounding box; None if empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return int(r0), int(c0), mask[r0:r1, c0:c1].astype(bool), cls


def _paint(shape: tuple[int, int], items: Sequence[_Item | None], *,
           keep_largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Paint objects in order (later overwrite earlier); return (instance map, class map), ids in order."""
    items = [it for it in items if it is not None]
    lab = np.zeros(shape, np.int64)
    for i, (r0, c0, m, _) in enumerate(items, 1):
        lab[r0:r0 + m.shape[0], c0:c0 + m.shape[1]][m] = i
    if keep_largest:
        eight = np.ones((3, 3), bool)
        for i, (r0, c0, m, _) in enumerate(items, 1):
            view = lab[r0:r0 + m.shape[0], c0:c0 + m.shape[1]]
            own = view == i
            n_own = int(own.sum())
            if n_own == 0 or n_own == int(m.sum()):
                continue
            pieces, n = ndimage.label(own, eight)
            if n > ndimage.label(m, eight)[1]:
                largest = 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
                view[own & (pieces != largest)] = 0
    lut = np.array([0] + [cls for *_, cls in items], np.uint8)
    return lab, lut[lab]


# ------------------------------------------------------------------------------------------- MoNuSeg
def _xml_regions(path: Path) -> list[np.ndarray]:
    """Vertex arrays (k, 2) as (x, y) for every Aperio <Region>, in document order."""
    try:
        root = ET.parse(path).getroot()
        return [np.array([[float(v.get("X")), float(v.get("Y"))] for v in region.iter("Vertex")],
                         float).reshape(-1, 2) for region in root.iter("Region")]
    except (ET.ParseError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: unreadable Aperio XML ({_why(exc)})") from None


def _monuseg(src: Path, out: Path, **_: Any) -> list[Path]:
    ann = _subdir(src, "Annotations") if src.is_dir() else None
    xmls = _files(ann or src, (".xml",))
    if not xmls:
        raise InputError(f"{src}: no Annotations/*.xml found")
    root = src if src.is_dir() else src.parent
    folders = [_subdir(root, "Tissue_Images", "Tissue Images", "images"), xmls[0].parent, root]
    written = []
    for xml in xmls:
        regions = _xml_regions(xml)
        image = _read_rgb(_find_image(xml.stem, folders, xml))
        items = [_polygon_item([(r, [])], image.shape[:2]) for r in regions]
        label, _ = _paint(image.shape[:2], items)
        written.append(_write_case(out, xml.stem, image, label, source=xml))
    return written


# ------------------------------------------------------------------------------------------- PanNuke
def _find_npy(src: Path, name: str, required: bool = True) -> Path | None:
    """`src/name`, or the single `name` below `src` (PanNuke's nested Fold folders)."""
    if src.is_file():
        src = src.parent
    direct = src / name
    if direct.is_file():
        return direct
    found = sorted(src.rglob(name))
    if len(found) > 1:
        raise InputError(f"{src}: several {name} files below it; point at one fold folder")
    if not found and required:
        raise InputError(f"{src}: {name} not found")
    return found[0] if found else None


def _load_npy(path: Path) -> np.ndarray:
    """Memory-map a .npy file (PanNuke folds are several GB)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: unreadable .npy ({_why(exc)})") from None


def _pannuke(src: Path, out: Path, **_: Any) -> list[Path]:
    img_path, mask_path = _find_npy(src, "images.npy"), _find_npy(src, "masks.npy")
    types_path = _find_npy(src, "types.npy", required=False)
    images, masks = _load_npy(img_path), _load_npy(mask_path)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"{img_path}: expected shape (N, H, W, 3), got {images.shape}")
    if masks.ndim != 4 or masks.shape[-1] < 5 or masks.shape[:3] != images.shape[:3]:
        raise InputError(f"{mask_path}: expected shape {images.shape[:3] + (6,)}, got {masks.shape}")
    if not len(images):
        raise InputError(f"{img_path}: no images")
    tissues = None
    if types_path is not None:
        tissues = [str(t) for t in _load_npy(types_path)]
        if len(tissues) != len(images):
            raise InputError(f"{types_path}: {len(tissues)} tissue names for {len(images)} images")
    fold = re.search(r"fold\s*_?(\d+)", str(img_path.parent), re.IGNORECASE)
    prefix = f"fold{fold.group(1)}" if fold else "pannuke"
    written, rows = [], {}
    for i in range(len(images)):
        name = f"{prefix}_{i:05d}"
        label = np.zeros(images.shape[1:3], np.int64)
        classes = np.zeros(images.shape[1:3], np.uint8)
        offset = 0
        for ch in range(5):
            ids = np.rint(np.asarray(masks[i, :, :, ch], np.float64)).astype(np.int64)
            on = ids > 0
            label[on], classes[on] = ids[on] + offset, ch + 1
            offset += int(ids.max(initial=0))
        written.append(_write_case(out, name, _to_rgb(images[i], img_path), label, classes, source=mask_path))
        if tissues is not None:
            rows[name] = tissues[i]
    if tissues is not None:
        table = out / "tissues.csv"
        if table.is_file():
            with table.open(newline="") as fh:
                rows = {r["name"]: r["tissue"] for r in csv.DictReader(fh) if r["name"] not in rows} | rows
        _write_text(table, "name,tissue\n" + "".join(f"{n},{t}\n" for n, t in sorted(rows.items())))
    return written


# ------------------------------------------------------------------------------------ CoNSeP / CPM-17
def _load_mat(path: Path) -> dict[str, Any]:
    """Load a MATLAB v5 .mat file."""
    from scipy.io import loadmat

    try:
        return loadmat(path)
    except NotImplementedError:
        raise InputError(f"{path}: MATLAB v7.3 .mat is unsupported; re-save with -v7") from None
    except Exception as exc:
        raise InputError(f"{path}: unreadable .mat file ({_why(exc)})") from None


def _consep(src: Path, out: Path, *, raw_types: bool = False, **_: Any) -> list[Path]:
    labels_dir = _subdir(src, "Labels") if src.is_dir() else None
    mats = _files(labels_dir or src, (".mat",))
    if not mats:
        raise InputError(f"{src}: no Labels/*.mat found")
    root = src if src.is_dir() else src.parent
    folders = [_subdir(root, "Images"), mats[0].parent, root]
    written = []
    for mat_path in mats:
        mat = _load_mat(mat_path)
        if "inst_map" not in mat:
            raise InputError(f"{mat_path}: no 'inst_map' variable")
        inst = np.rint(np.asarray(mat["inst_map"], np.float64)).astype(np.int64)
        if inst.ndim != 2 or (inst.size and inst.min() < 0):
            raise InputError(f"{mat_path}: inst_map must be a 2D non-negative map, got shape {inst.shape}")
        classes = None
        if "inst_type" in mat:
            types = np.rint(np.asarray(mat["inst_type"], np.float64)).astype(np.int64).ravel()
            if inst.max(initial=0) > len(types):
                raise InputError(f"{mat_path}: inst_type has {len(types)} entries but inst_map has id "
                                 f"{inst.max()}")
            classes = np.concatenate([[0], types])[inst]
        elif "type_map" in mat:  # one class per instance: the majority type over its pixels
            tmap = np.rint(np.asarray(mat["type_map"], np.float64)).astype(np.int64)
            if tmap.shape != inst.shape:
                raise InputError(f"{mat_path}: type_map shape {tmap.shape} != inst_map shape {inst.shape}")
            k = int(tmap.max(initial=0)) + 1
            votes = np.bincount((inst * k + tmap).ravel(), minlength=(inst.max() + 1) * k).reshape(-1, k)
            votes[:, 0] = 0
            classes = votes.argmax(1)[inst]
        if classes is not None:
            if classes.min(initial=0) < 0 or classes.max(initial=0) > (255 if raw_types else 7):
                raise InputError(f"{mat_path}: type ids {classes.min()}..{classes.max()} outside "
                                 f"{'0..255' if raw_types else 'CoNSeP 0..7 (use raw types)'}")
            classes = classes.astype(np.uint8) if raw_types else _CONSEP_MERGE[classes]
        image = _read_rgb(_find_image(mat_path.stem, folders, mat_path))
        written.append(_write_case(out, mat_path.stem, image, inst, classes, source=mat_path))
    return written


# ------------------------------------------------------------------------------------------- DSB2018
def _dsb2018(src: Path, out: Path, **_: Any) -> list[Path]:
    _need_dir(src, "DSB2018")
    cases = sorted(p for p in src.iterdir() if (p / "images").is_dir())
    cases = [src] if (src / "images").is_dir() else cases
    if not cases:
        raise InputError(f"{src}: no DSB2018 case folders (<id>/images/<id>.png)")
    written = []
    for case in cases:
        pngs = _files(case / "images", (".png",))
        own = case / "images" / f"{case.name}.png"
        if not pngs:
            raise InputError(f"{case / 'images'}: no image PNG")
        image = _read_rgb(own if own.is_file() else pngs[0])
        masks_dir = _need_dir(case / "masks", "masks (test-stage folders have no labels)")
        items = []
        for mpath in _files(masks_dir, (".png",)):
            m = _read_array(mpath)
            m = m[..., 0] if m.ndim == 3 else m
            if m.shape != image.shape[:2]:
                raise InputError(f"{mpath}: mask shape {m.shape} differs from image shape {image.shape[:2]}")
            items.append(_mask_item(m > 0))
        label, _ = _paint(image.shape[:2], items, keep_largest=False)
        written.append(_write_case(out, case.name, image, label, source=masks_dir))
    return written


# ---------------------------------------------------------------------------------------------- COCO
def rle_decode(counts: str | Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Decode a COCO RLE (compressed string or uncompressed counts list) to a bool (h, w) mask."""
    h, w = int(size[0]), int(size[1])
    if isinstance(counts, (str, bytes)):
        s = counts.decode("ascii") if isinstance(counts, bytes) else counts
        cnts: list[int] = []
        p = 0
        while p < len(s):
            x = k = 0
            more = True
            while more:
                if p >= len(s):
                    raise ValueError("truncated RLE string")
                c = ord(s[p]) - 48
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p += 1
                k += 1
                if not more and c & 0x10:
                    x |= -1 << (5 * k)
            if len(cnts) > 2:
                x += cnts[-2]
            cnts.append(x)
    else:
        cnts = [int(c) for c in counts]
    if any(c < 0 for c in cnts) or sum(cnts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(cnts)}, expected {h}x{w}={h * w}")
    values = np.zeros(len(cnts), bool)
    values[1::2] = True
    return np.repeat(values, cnts).reshape(w, h).T  # COCO RLE runs are column-major


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Encode a 2D mask as compressed COCO RLE {"size": [h, w], "counts": str} (pycocotools-compatible)."""
    flat = np.asarray(mask, bool).T.ravel()
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    cnts = ([0] + runs) if flat.size and flat[0] else runs
    chars = []
    for i, c in enumerate(cnts):
        x = c - cnts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = x != -1 if ch & 0x10 else x != 0
            chars.append(chr((ch | 0x20 if more else ch) + 48))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def _coco_item(seg: Any, shape: tuple[int, int], cls: int, where: str) -> _Item | None:
    """Rasterise one COCO segmentation (polygon parts or RLE) to a crop item."""
    if isinstance(seg, list):  # polygons: flat [x1, y1, x2, y2, ...] lists, parts of one object
        parts = [(np.asarray(p, float).reshape(-1, 2), []) for p in seg if len(p) >= 6 and len(p) % 2 == 0]
        return _polygon_item(parts, shape, cls)
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        try:
            mask = rle_decode(seg["counts"], seg["size"])
        except (ValueError, TypeError) as exc:
            raise InputError(f"{where}: bad RLE ({_why(exc)})") from None
        if mask.shape != shape:
            raise InputError(f"{where}: RLE size {list(mask.shape)} differs from image size {list(shape)}")
        item = _mask_item(mask)
        return None if item is None else (*item[:3], cls)
    raise InputError(f"{where}: unsupported segmentation (expected polygon list or RLE dict)")


def _coco(src: Path, out: Path, *, images: str | Path | None = None, **_: Any) -> list[Path]:
    jsons = _files(src, (".json",))
    if len(jsons) != 1:
        raise InputError(f"{src}: expected one COCO .json file, found {len(jsons)}")
    path = jsons[0]
    try:
        coco = json.loads(path.read_text())
        entries, anns, cats = coco["images"], coco.get("annotations", []), coco.get("categories", [])
        cat_ids = [int(c["id"]) for c in cats]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: unreadable COCO JSON ({_why(exc)})") from None
    if not entries:
        raise InputError(f"{path}: no images listed")
    image_dir = Path(images) if images is not None else path.parent
    cat_names = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    use_ids = bool(cat_ids) and all(1 <= c <= 255 for c in cat_ids)
    table = _class_table(out)
    if use_ids:
        for cid in cat_ids:
            if table.setdefault(cat_names[cid], cid) != cid or list(table.values()).count(cid) > 1:
                raise InputError(f"{path}: categories clash with the existing {out / 'classes.json'}")
    with_classes = len(set(cat_ids) | {int(a.get("category_id", 0)) for a in anns}) > 1
    by_image: dict[Any, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a.get("image_id"), []).append(a)
    written = []
    for entry in entries:
        file_name = str(entry.get("file_name", ""))
        img_path = image_dir / file_name
        if not img_path.is_file():
            img_path = image_dir / Path(file_name).name
        if not file_name or not img_path.is_file():
            raise InputError(f"{path}: image {file_name!r} not found in {image_dir}")
        image = _read_rgb(img_path)
        name = Path(file_name).stem
        seg_items, boxes = [], []
        for a in by_image.get(entry.get("id"), []):
            cid = int(a.get("category_id", 0))
            cls = cid if use_ids else _class_id(table, cat_names.get(cid, str(cid)))
            where = f"{path} (annotation {a.get('id')})"
            if a.get("segmentation"):
                seg_items.append(_coco_item(a["segmentation"], image.shape[:2], cls, where))
            elif a.get("bbox"):
                x, y, bw, bh = (float(v) for v in a["bbox"])
                boxes.append(f"{x:g},{y:g},{x + bw:g},{y + bh:g},{cls}\n")
        if boxes:
            _write_text(out / "boxes" / f"{name}.csv", "x1,y1,x2,y2,class\n" + "".join(boxes))
        if boxes and not seg_items:  # box-only (DES-SAM style): image + boxes, no label file
            _write_case(out, name, image, None, source=img_path)
            continue
        label, classes = _paint(image.shape[:2], seg_items)
        written.append(_write_case(out, name, image, label, classes if with_classes else None, source=path))
    if with_classes:
        _write_text(out / "classes.json", json.dumps(table, indent=1) + "\n")
    return written


# -------------------------------------------------------------------------------------------- nnU-Net
def _nnunet(src: Path, out: Path, **_: Any) -> list[Path]:
    import nibabel as nib

    images_dir = _need_dir(src / "imagesTr", "nnU-Net imagesTr")
    labels_dir = _need_dir(src / "labelsTr", "nnU-Net labelsTr")
    labels = sorted(labels_dir.glob("*.nii.gz"))
    if not labels:
        raise InputError(f"{labels_dir}: no .nii.gz labels")
    written = []
    for lab_path in labels:
        case = lab_path.name[: -len(".nii.gz")]
        img_path = images_dir / f"{case}_0000.nii.gz"
        if not img_path.is_file():
            raise InputError(f"{lab_path}: image {img_path.name} not found in {images_dir}")
        try:
            img, lab = nib.load(img_path), nib.load(lab_path)
            data, seg = np.asarray(img.dataobj, np.float32), np.asarray(lab.dataobj)
        except Exception as exc:
            raise InputError(f"{img_path.parent.parent}: unreadable NIfTI for {case} ({_why(exc)})") from None
        if data.ndim != 3 or data.shape != seg.shape:
            raise InputError(f"{lab_path}: label shape {seg.shape} differs from image shape {data.shape}")
        if not np.allclose(img.affine, lab.affine, atol=1e-4):
            raise InputError(f"{lab_path}: affine differs from that of {img_path.name}")
        if seg.size and (seg.min() < 0 or seg.max() > 255 or not np.array_equal(seg, np.rint(seg))):
            raise InputError(f"{lab_path}: label values must be integers 0..255")
        for kind, arr, dtype in (("images", data, np.float32), ("labels", seg, np.uint8)):
            target = out / kind / f"{case}.nii.gz"
            header = img.header.copy()
            header.set_data_dtype(dtype)
            with atomic_path(target) as tmp:
                nib.save(nib.Nifti1Image(arr.astype(dtype), img.affine, header), tmp)
        written.append(out / "labels" / f"{case}.nii.gz")
    return written


# -------------------------------------------------------------------------------------------- GeoJSON
def _geo_features(path: Path) -> list[dict]:
    """Features with Polygon/MultiPolygon geometry; detections/cells win over annotations when both exist."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable GeoJSON ({_why(exc)})") from None
    if isinstance(doc, dict):
        doc = doc.get("features", []) if doc.get("type") == "FeatureCollection" else [doc]
    if not isinstance(doc, list):
        raise InputError(f"{path}: not a GeoJSON FeatureCollection or list of features")
    feats = []
    for f in doc:
        if not isinstance(f, dict):
            raise InputError(f"{path}: feature is not an object")
        geom = (f.get("nucleusGeometry") or f.get("geometry")) or {}
        if geom.get("type") in ("Polygon", "MultiPolygon"):
            feats.append(f)
    kinds = ("detection", "cell", "tile", "PathDetectionObject", "PathCellObject", "PathTileObject")
    objects = [f for f in feats if ((f.get("properties") or {}).get("objectType") or f.get("id")) in kinds]
    return objects or feats


def _geo_parts(geom: dict, path: Path) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(outer ring, holes) per polygon of a GeoJSON Polygon/MultiPolygon, as (x, y) arrays."""
    try:
        polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        return [(np.asarray(p[0], float)[:, :2], [np.asarray(h, float)[:, :2] for h in p[1:]])
                for p in polys if p]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: bad {geom.get('type')} coordinates ({_why(exc)})") from None


def _geojson(src: Path, out: Path, *, images: str | Path | None = None, **_: Any) -> list[Path]:
    files = _files(src, (".geojson", ".json"))
    if not files:
        raise InputError(f"{src}: no .geojson files found")
    parsed = [(p, _geo_features(p)) for p in files]
    classified = any(feature_class(f) for _, feats in parsed for f in feats)
    table = _class_table(out)
    written = []
    for path, feats in parsed:
        stem = re.sub(r"\.(geo)?json$", "", path.name, flags=re.IGNORECASE)
        folders = [Path(images) if images is not None else None, path.parent]
        named = stem.lower().endswith(_IMAGE_EXTS)  # QuPath style "<slide>.tif.geojson"
        direct = [f / stem for f in folders if f and named and (f / stem).is_file()]
        img_path = direct[0] if direct else _find_image(stem, folders, path)
        image = _read_rgb(img_path)
        items = []
        for f in feats:
            cls = _class_id(table, feature_class(f) or "Unclassified") if classified else 0
            geom = f.get("nucleusGeometry") or f["geometry"]
            items.append(_polygon_item(_geo_parts(geom, path), image.shape[:2], cls))
        label, classes = _paint(image.shape[:2], items)
        name = Path(stem).stem if named else stem
        written.append(_write_case(out, name, image, label, classes if classified else None, source=path))
    if classified:
        _write_text(out / "classes.json", json.dumps(table, indent=1) + "\n")
    return written


# ---------------------------------------------------------------------------------------------- entry
_CONVERTERS: dict[str, Callable[..., list[Path]]] = {
    "monuseg": _monuseg, "pannuke": _pannuke, "consep": _consep, "dsb2018": _dsb2018,
    "coco": _coco, "nnunet": _nnunet, "geojson": _geojson,
}


def convert(fmt: str, src: str | Path, dst: str | Path, *, split: str = "train",
            images: str | Path | None = None, raw_types: bool = False) -> list[Path]:
    """Convert `src` in format `fmt` into `<dst>/<split>/` of the uniform layout; return the label paths."""
    if fmt not in _CONVERTERS:
        raise InputError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: not found")
    if images is not None and not Path(images).is_dir():
        raise InputError(f"{images}: images folder not found")
    return [p for p in _CONVERTERS[fmt](src, Path(dst) / split, images=images, raw_types=raw_types) if p]
