"""Dictionary transforms for 3D lesion training regions `{"image": (D, H, W) z-scored, "label": (D, H, W) bool,
"brain": (D, H, W) bool}` on the isotropic 1.5 mm grid, drawn from one shared numpy Generator (`Compose`).

All of it is [A] (not in M-SAM's code, which flips only): with one or two training volumes a from-scratch model
memorises where the lesions are instead of following the click, so the regions are made to differ (axis
permutations, intensity jitter) and carry extra lesions at random places (`SyntheticLesions`, in the spirit of
lesion-synthesis augmentation such as CarveMix), each one a different answer to a different click.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from promptsam.data.transforms import Compose, Sample

SPATIAL_KEYS = ("image", "label", "brain")


class RandomFlipPermute3d:
    """Flip each axis with probability 0.5 and, if `permute`, put the three axes in a random order (isotropic grid)."""

    def __init__(self, permute: bool = True) -> None:
        self.permute = permute

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        flips = [axis for axis in range(3) if rng.random() < 0.5]
        order = tuple(int(a) for a in rng.permutation(3)) if self.permute else (0, 1, 2)
        for key in SPATIAL_KEYS:
            if sample.get(key) is not None:
                sample[key] = np.ascontiguousarray(np.transpose(np.flip(sample[key], flips), order))
        return sample


class IntensityJitter3d:
    """Scale, shift and noise on the z-scored image: x * U(1 -/+ scale) + U(-/+ shift) + N(0, U(0, noise))."""

    def __init__(self, scale: float = 0.1, shift: float = 0.1, noise: float = 0.1) -> None:
        self.scale, self.shift, self.noise = scale, shift, noise

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"] * rng.uniform(1 - self.scale, 1 + self.scale) + rng.uniform(-self.shift, self.shift)
        sigma = rng.uniform(0, self.noise)
        sample["image"] = (image + rng.normal(0, sigma, image.shape) if sigma > 0 else image).astype(np.float32)
        return sample


class SyntheticLesions:
    """Paint up to `count` bright ellipsoids inside the brain, each added to the label as a lesion of its own.

    Radii U(`radius`) voxels per axis, a soft one-voxel rim, peak brightness U(`brightness`) in z units (patient19's
    lesion voxels: median 1.3, 90th percentile 1.8; its other brain voxels: 99th percentile 1.2) with a little texture.
    Blobs touching a lesion (real or painted) are skipped, so every painted lesion is its own component.
    """

    def __init__(self, count: int, radius: tuple[float, float] = (1.0, 4.0),
                 brightness: tuple[float, float] = (1.0, 2.0)) -> None:
        self.count, self.radius, self.brightness = count, radius, brightness

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image, label, brain = sample["image"], sample["label"], sample["brain"]
        candidates = np.flatnonzero(brain & ~label)
        n = int(rng.integers(0, self.count + 1))
        if n == 0 or candidates.size == 0:
            return sample
        image, label = image.copy(), label.copy()
        for _ in range(n):
            centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], image.shape))
            radii = rng.uniform(*self.radius, size=3)
            reach = int(np.ceil(radii.max())) + 2
            lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, image.shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            grid = np.ogrid[box]
            r = np.sqrt(sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, radii, strict=True)))
            weight = np.clip(1.5 - r, 0.0, 1.0) * brain[box]  # 1 inside r <= 0.5, fading to 0 at r = 1.5
            blob = weight >= 0.5
            if not blob.any() or (label[box] & (weight > 0)).any():
                continue
            value = rng.uniform(*self.brightness) + rng.normal(0, 0.15, weight.shape)
            image[box] = (1 - weight) * image[box] + weight * value
            label[box] |= blob
        sample["image"], sample["label"] = image.astype(np.float32), label
        return sample


def lesion_region_transforms(*, permute: bool, intensity: bool, synthetic_lesions: int,
                             seed: int | None = None) -> Compose:
    """The training-region augmentation: synthetic lesions, intensity jitter, then flips and axis permutations."""
    transforms: list = []
    if synthetic_lesions > 0:
        transforms.append(SyntheticLesions(synthetic_lesions))
    if intensity:
        transforms.append(IntensityJitter3d())
    transforms.append(RandomFlipPermute3d(permute=permute))
    return Compose(transforms, seed=seed)


__all__: Sequence[str] = ["IntensityJitter3d", "RandomFlipPermute3d", "SyntheticLesions", "lesion_region_transforms"]
