"""The classical floor: Otsu threshold + distance-transform watershed, the baseline every model must beat.

Pipeline: pick a channel in which nuclei are bright -> Gaussian smoothing -> Otsu threshold -> fill holes
and drop small objects -> distance transform -> `peak_local_max` markers -> watershed on the negative
distance inside the mask -> drop small objects -> relabel 1..N.

Channel choice (`modality="auto"`), by image statistics on the 0..255 scale:
- mean grey intensity < 100 -> "fluorescence": bright nuclei on a dark background; grey intensity.
- otherwise, if the three channels are (almost) equal -> "brightfield_gray": dark nuclei; inverted grey.
- otherwise -> "he" (stained brightfield): the haematoxylin channel of `skimage.color.rgb2hed`.
The mean-intensity rule is the one the DSB2018 subset's modality labels in manifest.csv were made with.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["MODALITIES", "detect_modality", "nucleus_channel", "watershed_nuclei"]

MODALITIES = ("fluorescence", "brightfield_gray", "he")
FLUORESCENCE_MEAN = 100.0  # mean grey (0..255) below which an image counts as fluorescence
GRAY_TOLERANCE = 2.0  # mean |channel difference| (0..255) below which an RGB image counts as grey


def _to_float255(image: np.ndarray) -> np.ndarray:
    """Return the image as float64 on a 0..255 scale."""
    img = np.asarray(image)
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float64) * (255.0 / np.iinfo(img.dtype).max)
    img = img.astype(np.float64)
    return img * 255.0 if img.max(initial=0.0) <= 1.0 else img


def detect_modality(image: np.ndarray) -> str:
    """Return "fluorescence", "brightfield_gray" or "he" for an HxW or HxWx3 image (rule in module doc)."""
    img = _to_float255(image)
    grey = img.mean(axis=-1) if img.ndim == 3 else img
    if grey.mean() < FLUORESCENCE_MEAN:
        return "fluorescence"
    if img.ndim == 2:
        return "brightfield_gray"
    spread = np.abs(img[..., 0] - img[..., 1]).mean() + np.abs(img[..., 1] - img[..., 2]).mean()
    return "brightfield_gray" if spread / 2 < GRAY_TOLERANCE else "he"


def nucleus_channel(image: np.ndarray, *, modality: str = "auto") -> tuple[np.ndarray, str]:
    """Return (float HxW channel where nuclei are bright, modality used)."""
    if modality == "auto":
        modality = detect_modality(image)
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'auto' or one of {MODALITIES}, got {modality!r}")
    img = _to_float255(image)
    if modality == "he" and img.ndim == 3:
        from skimage.color import rgb2hed

        return rgb2hed(np.clip(img / 255.0, 0.0, 1.0))[..., 0], modality
    grey = img.mean(axis=-1) if img.ndim == 3 else img
    return (grey if modality == "fluorescence" else 255.0 - grey), modality


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Return a copy of `labels` with objects of fewer than `min_area` pixels set to 0."""
    counts = np.bincount(labels.ravel())
    small = counts < min_area
    small[0] = False
    return np.where(small[labels], 0, labels)


def watershed_nuclei(
    image: np.ndarray,
    *,
    min_area: int = 30,
    min_distance: int = 5,
    sigma: float = 1.0,
    modality: str = "auto",
) -> np.ndarray:
    """Segment nuclei in an HxW or HxWx3 image; return an int32 HxW instance map (0 = background, 1..N).

    `min_area` (pixels) drops smaller objects, `min_distance` (pixels) separates watershed seeds,
    `sigma` is the Gaussian smoothing before thresholding; `modality` overrides the automatic choice.
    """
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import relabel_sequential, watershed

    channel, _ = nucleus_channel(image, modality=modality)
    if sigma > 0:
        channel = ndi.gaussian_filter(channel, sigma)
    if not np.isfinite(channel).all() or np.ptp(channel) == 0:
        return np.zeros(channel.shape, np.int32)
    mask = channel > threshold_otsu(channel)
    mask = ndi.binary_fill_holes(mask)
    if min_area > 1:
        mask = _drop_small(ndi.label(mask)[0], min_area) > 0
    if not mask.any():
        return np.zeros(channel.shape, np.int32)

    distance = ndi.distance_transform_edt(mask)
    components, _ = ndi.label(mask)
    peaks = peak_local_max(
        distance, min_distance=max(1, int(min_distance)), labels=components, exclude_border=False
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    # components that got no seed (flat plateaus) keep their own id instead of vanishing
    orphan, n_orphan = ndi.label(mask & (labels == 0))
    if n_orphan:
        labels = np.where(orphan > 0, orphan + labels.max(), labels)
    if min_area > 1:
        labels = _drop_small(labels, min_area)
    return relabel_sequential(labels)[0].astype(np.int32)
