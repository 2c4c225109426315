"""3D training-region augmentation: synthetic lesions, flips/permutations, and the lesion-centred crops."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from promptsam.data.lesion_augment import RandomFlipPermute3d, SyntheticLesions, lesion_region_transforms
from promptsam.methods.msam import LesionCase, RegionCrops, VolumeConfig

STRUCTURE = np.ones((3, 3, 3), bool)


def _region(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    brain = np.zeros((40, 40, 40), bool)
    brain[5:35, 5:35, 5:35] = True
    image = np.where(brain, rng.normal(0, 0.3, brain.shape), -3.0).astype(np.float32)
    label = np.zeros_like(brain)
    label[10:14, 10:14, 10:14] = True
    image[label] = 1.5
    return {"image": image, "label": label, "brain": brain}


def test_synthetic_lesions_are_bright_separate_components_inside_the_brain():
    sample = _region()
    before = {k: v.copy() for k, v in sample.items()}
    rng = np.random.default_rng(3)
    added = []
    for _ in range(10):
        out = SyntheticLesions(4)(_region(), rng)
        new = out["label"] & ~before["label"]
        assert (out["label"] >= before["label"]).all(), "real lesions are kept"
        assert not (new & ~before["brain"]).any(), "painted lesions stay inside the brain"
        n_before = ndimage.label(before["label"], structure=STRUCTURE)[1]
        n_after = ndimage.label(out["label"], structure=STRUCTURE)[1]
        n_new = ndimage.label(new, structure=STRUCTURE)[1]
        assert n_after == n_before + n_new, "each painted lesion is a component of its own"
        if new.any():
            assert out["image"][new].mean() > before["image"][new].mean() + 0.5
        added.append(n_new)
    assert max(added) > 0 and min(added) <= 4


def test_flip_permute_moves_image_label_and_brain_together():
    sample = _region()
    sample["label"][20:30, 12:16, 25:27] = True  # an asymmetric bar, so any axis change is visible
    sample["image"] = np.where(sample["label"], 2.0, np.where(sample["brain"], 0.0, -3.0)).astype(np.float32)
    rng = np.random.default_rng(0)
    shapes = set()
    for _ in range(8):
        out = RandomFlipPermute3d(permute=True)({k: v.copy() for k, v in sample.items()}, rng)
        np.testing.assert_array_equal(out["label"], out["image"] > 1.0)
        np.testing.assert_array_equal(out["brain"], out["image"] > -1.0)
        bar = ndimage.find_objects(out["label"].astype(np.uint8))[0]
        shapes.add(tuple(s.stop - s.start for s in bar))
    assert len(shapes) > 1, "axes were permuted"


def test_region_crops_centre_on_single_lesions_and_apply_the_augmentation():
    label = np.zeros((150, 60, 60), bool)
    label[10:13, 30:33, 30:33] = True  # two lesions far apart: a 64³ region holds only one of them
    label[135:140, 28:33, 28:33] = True
    image = np.where(label, 3.0, 1.0).astype(np.float32)
    case = LesionCase("toy", image, np.eye(4), label, None, None)
    official = RegionCrops([case], VolumeConfig(size=64, min_foreground=1), length=4, seed=0)
    per_lesion = RegionCrops([case], VolumeConfig(size=64, min_foreground=1, crop_centre="lesion",
                                                   synthetic_lesions=3), length=40, seed=0)
    counts = {int(official[i]["label"].sum()) for i in range(4)}
    assert counts == {0} or counts <= {27, 125}  # the roi centre lies between them
    sizes = [int(per_lesion[i]["label"].sum()) for i in range(40)]
    assert any(27 <= s < 125 for s in sizes) and any(s >= 125 for s in sizes), "regions around each lesion"
    assert any(s not in (27, 125) for s in sizes), "synthetic lesions were added"


def test_no_augmentation_options_give_the_plain_pipeline():
    compose = lesion_region_transforms(permute=False, intensity=False, synthetic_lesions=0, seed=0)
    assert [type(t).__name__ for t in compose.transforms] == ["RandomFlipPermute3d"]
    assert RegionCrops([], VolumeConfig(), length=1, seed=0).augment is None
