"""The 3D classical floor: percentile threshold inside the brain mask and the leave-one-out percentile choice."""

from __future__ import annotations

import numpy as np
import pytest

from promptsam.inference.classical3d import brain_mask, choose_percentile, dice_table, percentile_threshold
from promptsam.metrics.semantic import dice


def synthetic(fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 20³ "brain" (values 50-100) with `fraction` of its voxels as bright lesions (200)."""
    rng = np.random.default_rng(seed)
    volume = rng.uniform(50, 100, size=(20, 20, 20)).astype(np.float32)
    label = np.zeros(volume.shape, np.uint8)
    idx = rng.choice(volume.size, size=round(fraction * volume.size), replace=False)
    label.flat[idx] = 1
    volume[label > 0] = 200
    return volume, label


def test_threshold_finds_the_bright_voxels_inside_the_brain():
    volume, label = synthetic(0.02, 0)
    volume[:2] = 0  # outside the brain
    volume[0, 0, 0] = -5  # negative voxels are not brain either
    pred = percentile_threshold(volume, percentile=98)
    assert pred.dtype == bool and not pred[:2].any()
    assert dice(label[2:], pred[2:]) > 0.95
    assert not percentile_threshold(np.zeros((5, 5, 5)), percentile=90).any()


def test_brain_mask_erosion_and_min_size():
    volume = np.zeros((12, 12, 12), np.float32)
    volume[2:10, 2:10, 2:10] = 1
    assert brain_mask(volume).sum() == 512 and brain_mask(volume, erosion=1).sum() == 216
    volume[3, 3, 3] = 5  # an isolated bright voxel
    volume[6:9, 6:9, 6:9] = 5
    assert percentile_threshold(volume, percentile=90).sum() == 28
    assert percentile_threshold(volume, percentile=90, min_size=2).sum() == 27


def test_leave_one_out_uses_the_other_volumes():
    # A, B want the 98th percentile (2 % lesions), C, D the 90th (10 %): each volume gets its peers' majority
    data = [synthetic(0.02, 1), synthetic(0.02, 2), synthetic(0.10, 3), synthetic(0.10, 4)]
    volumes, labels = [v for v, _ in data], [lab for _, lab in data]
    table = dice_table(volumes, labels, [90, 98])
    assert table.shape == (4, 2) and table[0, 1] > 0.95 and table[2, 0] > 0.95
    assert choose_percentile(volumes, labels, [90, 98]) == [90.0, 90.0, 98.0, 98.0]
    with pytest.raises(ValueError, match="two volumes"):
        choose_percentile(volumes[:1], labels[:1], [90])


def test_floor_on_the_real_ms_volume(shared_data):
    from promptsam.io.volumes import read_pair
    from promptsam.metrics.volume import score_lesions

    def pair(dataset, case):
        return read_pair(*(shared_data / dataset / "train" / d / f"{case}.nii.gz" for d in ("images", "labels")))

    ms, ms_label = pair("ms_lesion_3d", "patient19")
    br, br_label = pair("brats2021_edema_3d", "BraTS2021_01646")
    candidates = [90, 94, 96, 98, 99, 99.5]
    chosen = choose_percentile([ms.array, br.array], [ms_label.array, br_label.array], candidates)
    assert chosen[0] in candidates  # chosen on BraTS alone
    scores = score_lesions(ms_label.array, percentile_threshold(ms.array, percentile=chosen[0]), spacing=ms.spacing)
    assert scores["dice"] > 0.2 and scores["lesion_recall"] > 0.5
    assert np.isfinite(scores["hd95"]) and scores["n_gt_lesions"] == 98
