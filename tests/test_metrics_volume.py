"""Per-volume lesion scores on hand-worked cases: overlap, surface distances in mm, lesion detection, empty masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from promptsam.metrics import score_lesions
from promptsam.metrics.volume import connected_lesions, lesion_detection


def empty():
    return np.zeros((12, 12, 12), np.uint8)


def test_two_cubes_with_known_overlap():
    gt, pred = empty(), empty()
    gt[2:6, 2:6, 2:6] = 1  # 64 voxels
    pred[4:8, 2:6, 2:6] = 1  # shifted by 2 along axis 0: 32 voxels shared
    s = score_lesions(gt, pred, spacing=(2.0, 1.0, 1.0))
    assert s["dice"] == pytest.approx(0.5) and s["iou"] == pytest.approx(1 / 3)
    assert s["n_gt_lesions"] == s["n_pred_lesions"] == 1 and s["lesion_recall"] == s["lesion_precision"] == 1.0


@pytest.mark.parametrize(
    ("axis", "spacing", "expected"),
    [(0, (2.0, 0.5, 0.5), 6.0), (2, (2.0, 0.5, 0.5), 1.5), (1, (1.0, 3.0, 1.0), 9.0)],
)
def test_surface_distances_in_mm_follow_the_axis_spacing(axis, spacing, expected):
    # two parallel one-voxel plates 3 voxels apart along `axis`: every surface voxel is 3 * spacing[axis] away
    gt, pred = empty(), empty()
    index_gt, index_pred = [slice(None)] * 3, [slice(None)] * 3
    index_gt[axis], index_pred[axis] = 2, 5
    gt[tuple(index_gt)] = 1
    pred[tuple(index_pred)] = 1
    s = score_lesions(gt, pred, spacing=spacing)
    assert s["dice"] == 0.0 and s["iou"] == 0.0
    assert s["hd95"] == pytest.approx(expected) and s["asd"] == pytest.approx(expected)
    assert s["lesion_recall"] == 0.0 and s["lesion_precision"] == 0.0


def test_lesion_recall_three_lesions_two_hit():
    gt, pred = empty(), empty()
    gt[1:3, 1:3, 1:3] = 1
    gt[6:8, 6:8, 6:8] = 1
    gt[1:3, 8:10, 1:3] = 1
    pred[2:4, 2:4, 2:4] = 1  # touches lesion 1 (one voxel)
    pred[7, 7, 7] = 1  # inside lesion 2
    pred[9:11, 1:3, 9:11] = 1  # false positive
    d = lesion_detection(gt, pred)
    assert (d["n_gt_lesions"], d["n_pred_lesions"], d["n_detected"], d["n_true_pred"]) == (3, 3, 2, 2)
    assert d["lesion_recall"] == pytest.approx(2 / 3) and d["lesion_precision"] == pytest.approx(2 / 3)


def test_one_prediction_covering_two_lesions_detects_both():
    gt, pred = empty(), empty()
    gt[2, 2, 2] = gt[2, 2, 6] = 1
    pred[2, 2, 1:8] = 1
    d = lesion_detection(gt, pred)
    assert d["n_gt_lesions"] == 2 and d["n_pred_lesions"] == 1
    assert d["lesion_recall"] == 1.0 and d["lesion_precision"] == 1.0


def test_connectivity():
    mask = empty()
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # corner neighbours
    assert connected_lesions(mask)[1] == 1
    assert connected_lesions(mask, connectivity=6)[1] == 2
    with pytest.raises(ValueError, match="connectivity"):
        connected_lesions(mask, connectivity=8)


def test_empty_masks_follow_the_documented_rules():
    lesion = empty()
    lesion[3:5, 3:5, 3:5] = 1
    both = score_lesions(empty(), empty(), spacing=1.0)
    assert all(math.isnan(both[k]) for k in ("dice", "iou", "hd95", "asd", "lesion_recall", "lesion_precision"))
    assert both["n_gt_lesions"] == both["n_pred_lesions"] == 0

    missed = score_lesions(lesion, empty(), spacing=1.0)  # GT but no prediction
    assert missed["dice"] == 0.0 and missed["iou"] == 0.0 and missed["lesion_recall"] == 0.0
    assert math.isnan(missed["hd95"]) and math.isnan(missed["asd"]) and math.isnan(missed["lesion_precision"])

    spurious = score_lesions(empty(), lesion, spacing=1.0)  # prediction on a lesion-free volume
    assert spurious["dice"] == 0.0 and spurious["lesion_precision"] == 0.0
    assert math.isnan(spurious["lesion_recall"]) and math.isnan(spurious["hd95"])


def test_shape_and_dimension_errors():
    with pytest.raises(ValueError, match="same shape"):
        score_lesions(empty(), np.zeros((12, 12, 11)), spacing=1.0)
    with pytest.raises(ValueError, match="3D"):
        score_lesions(np.zeros((4, 4)), np.zeros((4, 4)), spacing=1.0)
