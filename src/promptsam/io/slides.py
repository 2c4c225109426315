"""Large 2D images (whole-slide images, big TIFF mosaics) read region by region, never whole.

`open_slide(path)` gives a `Slide`: its level-0 `shape` (H, W), `channels`, `dtype`, `read(y, x, h, w)` of any
region (zero-filled outside the image) and a `thumbnail`. TIFF-based files (pyramidal and tiled TIFF, OME-TIFF,
Aperio SVS, most BigTIFF) are read with tifffile through zarr, chunk by chunk; other slide formats (.ndpi, .mrxs,
.scn, .vms, .bif) through OpenSlide when `openslide-python` is installed; other rasters (PNG, JPEG) are read whole;
an in-memory array works too (`ArraySlide`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from promptsam.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".tf8", ".ome.tif", ".ome.tiff")
OPENSLIDE_SUFFIXES = (".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


class Slide:
    """A 2D image read by region; subclasses implement `_read` (in-bounds regions only)."""

    path: Path | None = None
    shape: tuple[int, int]
    channels: int  # 1 (grey) or 3 (RGB)
    dtype: np.dtype

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Region (h, w[, 3]) with top-left (y, x) in level-0 pixels; parts outside the image are 0."""
        height, width = self.shape
        out = np.zeros((h, w) + ((self.channels,) if self.channels > 1 else ()), self.dtype)
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, height), min(x + w, width)
        if y1 > y0 and x1 > x0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._read(y0, x0, y1 - y0, x1 - x0)
        return out

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """A downsampled copy whose longest side is at most `max_side`, and its factor (level-0 px per px)."""
        factor = max(1, int(np.ceil(max(self.shape) / max_side)))
        return self._strided(factor), float(factor)

    def _strided(self, factor: int, rows: int = 2048) -> np.ndarray:
        """Every `factor`-th pixel of level 0, read in bands of `rows` rows to bound memory."""
        height, width = self.shape
        band = max(factor, rows // factor * factor)
        parts = [self.read(y, 0, min(band, height - y), width)[::factor, ::factor] for y in range(0, height, band)]
        return np.concatenate(parts, axis=0)

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ArraySlide(Slide):
    """An in-memory (H, W) or (H, W, 3) array seen as a slide."""

    def __init__(self, array: np.ndarray, path: Path | None = None) -> None:
        array = np.asarray(array)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
            raise InputError(f"{path or 'image'}: expected a grey or RGB 2D image, got shape {array.shape}")
        self.array, self.path = array, path
        self.shape, self.channels, self.dtype = array.shape[:2], 1 if array.ndim == 2 else 3, array.dtype

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.array[y : y + h, x : x + w]

    def _strided(self, factor: int, rows: int = 2048) -> np.ndarray:
        return self.array[::factor, ::factor]


class TiffSlide(Slide):
    """Level 0 of a (pyramidal, tiled) TIFF read chunk-wise through tifffile's zarr store."""

    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        self.path = path
        quiet = logging.getLogger("tifffile")
        level, quiet.level = quiet.level, logging.CRITICAL  # damaged files are reported below, in one line
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            self._levels = [zarr.open(series.aszarr(level=k), mode="r") for k in range(len(series.levels))]
            complete = all(_complete(page, path.stat().st_size) for page in series.levels[0].pages)
        except Exception as err:  # noqa: BLE001 - any parse failure becomes one line
            self.close()
            raise InputError(f"{path}: unreadable TIFF ({type(err).__name__}: {err})") from None
        finally:
            quiet.level = level
        if not complete:
            self.close()
            raise InputError(f"{path}: truncated or damaged TIFF (image data missing)")
        axes = series.axes
        shape = self._levels[0].shape
        if axes in ("YX", "YXS") or (axes == "CYX" and shape[0] == 3):
            pass
        else:
            self.close()
            raise InputError(f"{path}: expected a 2D grey or RGB image, got axes {axes} of shape {shape}")
        self._channels_first = axes == "CYX"
        if self._channels_first:
            shape = shape[1:] + shape[:1]
        if len(shape) == 3 and shape[-1] not in (1, 3):
            self.close()
            raise InputError(f"{path}: expected 1 or 3 channels, got {shape[-1]}")
        self.shape = tuple(int(s) for s in shape[:2])
        self.channels = 3 if len(shape) == 3 and shape[-1] == 3 else 1
        self.dtype = np.dtype(self._levels[0].dtype)

    def _region(self, level: Any, y: int, x: int, h: int, w: int) -> np.ndarray:
        if self._channels_first:
            return np.moveaxis(np.asarray(level[:, y : y + h, x : x + w]), 0, -1)
        region = np.asarray(level[y : y + h, x : x + w])
        return region[..., 0] if region.ndim == 3 and self.channels == 1 else region

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        try:
            return self._region(self._levels[0], y, x, h, w)
        except Exception as err:  # noqa: BLE001 - a corrupt tile anywhere in a slide gives one line
            raise InputError(f"{self.path}: cannot read region y={y} x={x} {h}x{w} ({type(err).__name__})") from None

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """From the smallest pyramid level at least `max_side` / 2 across, else strided reads of level 0."""
        height = self.shape[0]
        for level in reversed(self._levels[1:]):
            lh, lw = (level.shape[1:3] if self._channels_first else level.shape[:2])
            if max(lh, lw) >= max_side // 2:
                small = self._region(level, 0, 0, lh, lw)
                step = max(1, int(np.ceil(max(lh, lw) / max_side)))
                return small[::step, ::step], height / lh * step
        return super().thumbnail(max_side)

    def close(self) -> None:
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()


def _complete(page: Any, file_size: int) -> bool:
    """Whether every strip or tile of a TIFF page lies inside the file (empty tiles of sparse files allowed)."""
    offsets, counts = page.dataoffsets, page.databytecounts
    if not offsets or len(offsets) != len(counts):
        return False
    return all((o == 0 and c == 0) or (o > 0 and o + c <= file_size) for o, c in zip(offsets, counts, strict=True))


class OpenSlideSlide(Slide):
    """Level 0 of a slide read through OpenSlide (RGB; transparent pixels outside the scanned area are white)."""

    def __init__(self, path: Path) -> None:
        try:
            import openslide
        except ImportError:
            raise InputError(f"{path}: reading {path.suffix} slides needs OpenSlide: pip install openslide-python "
                             "openslide-bin") from None
        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as err:  # noqa: BLE001
            raise InputError(f"{path}: unreadable slide ({type(err).__name__}: {err})") from None
        self.path = path
        w, h = self._slide.dimensions
        self.shape, self.channels, self.dtype = (int(h), int(w)), 3, np.dtype(np.uint8)

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        rgba = np.asarray(self._slide.read_region((x, y), 0, (w, h)))
        rgb, alpha = rgba[..., :3].astype(np.float32), rgba[..., 3:4].astype(np.float32) / 255.0
        return np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        h, w = self.shape
        thumb = np.asarray(self._slide.get_thumbnail((max_side, max_side)).convert("RGB"))
        return thumb, h / thumb.shape[0]

    def close(self) -> None:
        self._slide.close()


def open_slide(path: str | os.PathLike | np.ndarray) -> Slide:
    """A `Slide` for a file (TIFF family through tifffile, other WSI formats through OpenSlide) or an array."""
    if isinstance(path, np.ndarray):
        return ArraySlide(path)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    name = path.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        return TiffSlide(path)
    if name.endswith(OPENSLIDE_SUFFIXES):
        return OpenSlideSlide(path)
    from promptsam.io.images import read_image

    return ArraySlide(read_image(path), path)


__all__ = ["ArraySlide", "OpenSlideSlide", "Slide", "TiffSlide", "open_slide"]
