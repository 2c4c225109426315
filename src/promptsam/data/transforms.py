"""Dictionary transforms for 2D nucleus samples `{"image": HxWx3 uint8, "label": HxW ids, "classes": HxW | None}`
(and optionally "prompts", a prompter's points as a map, data.sampling.prompt_map).

Small seedable callables composed into a pipeline (MONAI's habit); geometric ones move image and maps together
(nearest for maps), photometric ones touch the image only. Used by the prompter and segmentor training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.color import hed2rgb, rgb2hed

MAP_KEYS = ("label", "classes", "prompts")  # prompts: data.sampling.prompt_map
Sample = dict[str, Any]


class Compose:
    """Apply transforms in order, each drawing from one shared numpy Generator."""

    def __init__(self, transforms: Sequence[Callable[[Sample, np.random.Generator], Sample]], seed: int | None = None):
        self.transforms = list(transforms)
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample, self.rng)
        return sample


def _maps(sample: Sample) -> list[str]:
    return [k for k in MAP_KEYS if sample.get(k) is not None]


class RandomCrop:
    """Crop `size` x `size` (zero-padding smaller images), preferring crops that contain objects."""

    def __init__(self, size: int, tries: int = 5) -> None:
        self.size, self.tries = size, tries

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample["image"].shape[:2]
        s = self.size
        if h < s or w < s:
            pad = ((0, max(0, s - h)), (0, max(0, s - w)))
            sample["image"] = np.pad(sample["image"], pad + ((0, 0),))
            for k in _maps(sample):
                sample[k] = np.pad(sample[k], pad)
            h, w = sample["image"].shape[:2]
        for _ in range(self.tries):
            y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            if sample["label"][y : y + s, x : x + s].any():
                break
        sample["image"] = sample["image"][y : y + s, x : x + s]
        for k in _maps(sample):
            sample[k] = sample[k][y : y + s, x : x + s]
        return sample


class RandomFlipRotate:
    """Random 90-degree rotation and horizontal/vertical flips (the dihedral group), each with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        k = int(rng.integers(0, 4)) if rng.random() < self.p else 0
        flip_y, flip_x = rng.random() < self.p, rng.random() < self.p
        for key in ["image", *_maps(sample)]:
            a = np.rot90(sample[key], k, axes=(0, 1))
            if flip_y:
                a = a[::-1]
            if flip_x:
                a = a[:, ::-1]
            sample[key] = np.ascontiguousarray(a)
        return sample


class ColorJitter:
    """Brightness, contrast and saturation jitter and a hue-like channel mix (stain variation), probability p."""

    def __init__(self, brightness: float = 0.25, contrast: float = 0.25, saturation: float = 0.1, hue: float = 0.05,
                 p: float = 0.5) -> None:
        self.b, self.c, self.s, self.h, self.p = brightness, contrast, saturation, hue, p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        img = sample["image"].astype(np.float32)
        img = img * rng.uniform(1 - self.b, 1 + self.b)
        mean = img.mean()
        img = (img - mean) * rng.uniform(1 - self.c, 1 + self.c) + mean
        grey = img.mean(axis=2, keepdims=True)
        img = (img - grey) * rng.uniform(1 - self.s, 1 + self.s) + grey
        mix = np.eye(3, dtype=np.float32) + rng.uniform(-self.h, self.h, (3, 3)).astype(np.float32)
        img = img @ mix.T
        sample["image"] = np.clip(img, 0, 255).astype(np.uint8)
        return sample


class StainJitter:
    """Haematoxylin-eosin-DAB stain jitter after Tellez et al. 2018: each stain's optical density (skimage's rgb2hed)
    scaled by U(1-sigma, 1+sigma) and shifted by U(-sigma, sigma) / 5, on colour (stained brightfield) images only,
    probability p. [A] The shift is a fifth of Tellez's: rgb2hed's densities are small (haematoxylin's 99th
    percentile ~0.16 on MoNuSeg), and a shift of sigma turned the tissue white or red."""

    def __init__(self, sigma: float = 0.05, p: float = 0.5) -> None:
        self.sigma, self.p = sigma, p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample["image"]
        if self.sigma <= 0 or rng.random() >= self.p or np.ptp(img.astype(np.int16), axis=2).max() < 8:
            return sample  # off, not drawn, or a grey image (fluorescence): no stains to jitter
        hed = rgb2hed(img)
        hed = hed * rng.uniform(1 - self.sigma, 1 + self.sigma, 3) + rng.uniform(-self.sigma, self.sigma, 3) / 5
        sample["image"] = np.clip(hed2rgb(hed) * 255 + 0.5, 0, 255).astype(np.uint8)
        return sample


class GaussianBlur:
    """Gaussian blur with sigma in `sigma`, probability p."""

    def __init__(self, sigma: tuple[float, float] = (0.5, 1.5), p: float = 0.2) -> None:
        self.sigma, self.p = sigma, p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() < self.p:
            s = rng.uniform(*self.sigma)
            sample["image"] = ndimage.gaussian_filter(sample["image"], sigma=(s, s, 0))
        return sample


class GaussianNoise:
    """Additive Gaussian noise of standard deviation up to `std` grey levels, probability p."""

    def __init__(self, std: float = 7.0, p: float = 0.25) -> None:
        self.std, self.p = std, p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() < self.p:
            noise = rng.normal(0, rng.uniform(0, self.std), sample["image"].shape)
            sample["image"] = np.clip(sample["image"] + noise, 0, 255).astype(np.uint8)
        return sample


def _zoom(sample: Sample, f: float, **options: Any) -> Sample:
    """Resize the image (bilinear, kept uint8) and the maps (nearest) by `f` with ndimage.zoom `options`."""
    sample["image"] = np.clip(ndimage.zoom(sample["image"], (f, f, 1), order=1, **options), 0, 255).astype(np.uint8)
    for k in _maps(sample):
        sample[k] = ndimage.zoom(sample[k], f, order=0, **options)
    return sample


class RandomScale:
    """Rescale image and maps by a factor in `scale` (bilinear / nearest) with probability p (magnification)."""

    def __init__(self, scale: tuple[float, float] = (0.8, 1.25), p: float = 0.3) -> None:
        self.scale, self.p = scale, p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        return _zoom(sample, rng.uniform(*self.scale))


class Zoom:
    """Resize image (bilinear) and maps (nearest) by a fixed factor: the magnification a model is trained at."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if self.factor == 1:
            return sample
        return _zoom(sample, self.factor, grid_mode=True, mode="nearest")


def training_transforms(crop: int = 256, *, zoom: float = 1.0, scale: tuple[float, float] = (0.8, 1.25),
                        scale_p: float = 0.3, stain: float = 0.0, seed: int | None = None) -> Compose:
    """The augmentation pipeline of the nucleus trainers (a CPU-cheap subset of PromptNucSeg's, methods.md §3.2).

    With `zoom` != 1 the crop is taken at `crop / zoom` pixels and magnified to `crop` (the segmentor's `scale`);
    `scale` and `scale_p` are RandomScale's range and probability (magnification augmentation); `stain` is
    StainJitter's sigma (0: off, drawing nothing, so the other transforms see the same random numbers).
    """
    return Compose(
        [RandomScale(scale, scale_p), RandomCrop(round(crop / zoom)), Zoom(zoom), RandomFlipRotate(),
         StainJitter(stain), ColorJitter(), GaussianBlur(), GaussianNoise()],
        seed=seed,
    )
