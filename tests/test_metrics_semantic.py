"""Binary Dice/IoU and MONAI-backed surface distances on hand-worked 2D and 3D cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from promptsam.metrics import (
    average_surface_distance,
    dice,
    hausdorff95,
    hausdorff_distance,
    iou,
    score_volume,
)

# Two 5x5 squares, the prediction shifted down by 2 rows:
#   gt rows 5-9, pred rows 7-11 (cols 5-9 for both). |G| = |P| = 25, |G∩P| = 15 (rows 7-9)
#   Dice = 30/50 = 0.6, IoU = 15/35 = 3/7.
#   Surfaces = the 16 boundary pixels of each square. gt -> pred distances: top row (5 px) 2 each = 10;
#   row 6 sides (2 px) 1 each = 2; rows 7-8 sides lie on pred's sides = 0; bottom row (9, 5..9) ->
#   0, 1, 2, 1, 0 = 4. Total 16 over 16 px, same the other way -> ASD = 32/32 = 1.0; HD100 = 2.
#   Spacing (2, 1): the shift is along rows, so HD100 = 4.
GT = np.zeros((20, 20), np.uint8)
GT[5:10, 5:10] = 1
PRED = np.zeros((20, 20), np.uint8)
PRED[7:12, 5:10] = 1


def test_dice_iou_hand_worked():
    """Dice 0.6 and IoU 3/7 for the shifted squares; label values other than 1 count as foreground."""
    assert dice(GT, PRED) == pytest.approx(0.6, abs=1e-12)
    assert iou(GT, PRED) == pytest.approx(3 / 7, abs=1e-12)
    assert dice(GT * 7, PRED.astype(bool)) == pytest.approx(0.6, abs=1e-12)


def test_dice_iou_empty_conventions():
    """Both empty -> NaN; exactly one empty -> 0.0."""
    z = np.zeros_like(GT)
    assert math.isnan(dice(z, z)) and math.isnan(iou(z, z))
    assert dice(GT, z) == 0.0 and iou(z, GT) == 0.0


def test_surface_distances_hand_worked():
    """HD100 2 (4 with spacing (2, 1)), HD95 2, ASD 1.0; identical masks give 0."""
    assert hausdorff_distance(GT, PRED) == pytest.approx(2.0)
    assert hausdorff_distance(GT, PRED, spacing=(2.0, 1.0)) == pytest.approx(4.0)
    assert hausdorff95(GT, PRED) == pytest.approx(2.0)
    assert average_surface_distance(GT, PRED) == pytest.approx(1.0, abs=1e-6)
    assert hausdorff95(GT, GT) == 0.0 and average_surface_distance(GT, GT) == 0.0


def test_surface_distances_empty_is_nan():
    """HD95 and ASD are NaN when either mask is empty."""
    z = np.zeros_like(GT)
    for gt, pred in ((z, z), (GT, z), (z, PRED)):
        assert math.isnan(hausdorff95(gt, pred))
        assert math.isnan(average_surface_distance(gt, pred))


def test_3d_volume_with_spacing():
    """A 3x4x4 box shifted by one slice with 3 mm slices: Dice 2/3, IoU 1/2, HD95 = HD100 = 3 mm."""
    # |G| = |P| = 48, overlap 2 slices = 32 -> Dice 64/96, IoU 32/64; every surface shift is one slice = 3 mm
    gt = np.zeros((8, 10, 10), np.int16)
    gt[2:5, 3:7, 3:7] = 1
    pred = np.roll(gt, 1, axis=0)
    s = score_volume(gt, pred, spacing=(3.0, 1.0, 1.0))
    assert set(s) == {"dice", "iou", "hd95", "asd"}
    assert s["dice"] == pytest.approx(2 / 3) and s["iou"] == pytest.approx(0.5)
    assert s["hd95"] == pytest.approx(3.0)
    assert hausdorff_distance(gt, pred, spacing=3.0) == pytest.approx(3.0)
    assert 0.0 < s["asd"] < 3.0
    s = score_volume(gt, np.zeros_like(gt))
    assert (s["dice"], s["iou"]) == (0.0, 0.0) and math.isnan(s["hd95"]) and math.isnan(s["asd"])


def test_errors():
    """Shape mismatch names both shapes; wrong spacing length and 1D input are rejected."""
    with pytest.raises(ValueError, match=r"\(20, 20\).*\(20, 19\)"):
        dice(GT, PRED[:, :-1])
    with pytest.raises(ValueError, match=r"\(20, 20\).*\(20, 19\)"):
        hausdorff95(GT, PRED[:, :-1])
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(GT, PRED, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="2D or 3D"):
        hausdorff95(GT[0], PRED[0])
