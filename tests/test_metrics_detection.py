"""Point matching and detection/classification P/R/F1 on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from promptsam.metrics import detection_scores, match_points, summarize_detection

# GT at x = 0, 10, 30 (y = 0). Predictions (score): (100,100) .99, (2,0) .95, (1,0) .90, (29,0) .50.
#   visiting by score: (100,100) has no GT within 12 -> FP; (2,0) takes the nearest GT (0,0)
#   (d 2, vs 8 for x=10);
#   (1,0) takes the nearest unmatched GT (10,0) (d 9 <= 12); (29,0) takes (30,0) (d 1).
#   tp 3, n_pred 4, n_gt 3 -> P 0.75, R 1.0, F1 2·3/7 = 6/7.
GT_PTS = np.array([[0.0, 0.0], [10.0, 0.0], [30.0, 0.0]])
PRED_PTS = np.array([[100.0, 100.0], [2.0, 0.0], [1.0, 0.0], [29.0, 0.0]])
SCORES = np.array([0.99, 0.95, 0.90, 0.50])


def test_greedy_matching_hand_worked():
    """Matches and scores of the hand-worked example above."""
    m = match_points(GT_PTS, PRED_PTS, pred_scores=SCORES)
    assert sorted(zip(m.gt_index.tolist(), m.pred_index.tolist(), strict=True)) == [(0, 1), (1, 2), (2, 3)]
    assert m.unmatched_pred.tolist() == [0] and m.unmatched_gt.tolist() == []
    s = detection_scores(GT_PTS, PRED_PTS, pred_scores=SCORES)
    assert (s["tp"], s["n_gt"], s["n_pred"]) == (3.0, 3.0, 4.0)
    assert s["precision"] == pytest.approx(0.75)
    assert s["recall"] == pytest.approx(1.0)
    assert s["f1"] == pytest.approx(6 / 7)


def test_score_order_decides_who_matches():
    """One GT, two candidates: the higher-scored prediction wins even if it is farther."""
    # GT (0,0); preds (1,0) score .1 and (5,0) score .9 -> pred 1 (farther, higher score) is matched.
    gt, pred = np.array([[0.0, 0.0]]), np.array([[1.0, 0.0], [5.0, 0.0]])
    assert match_points(gt, pred, pred_scores=[0.1, 0.9]).pred_index.tolist() == [1]
    # without scores the input order is used: pred 0 matches.
    assert match_points(gt, pred).pred_index.tolist() == [0]


def test_radius_is_inclusive_and_3d_points_work():
    """Distance exactly equal to the radius matches; 3D points are supported."""
    gt = np.array([[0.0, 0.0, 0.0]])
    assert match_points(gt, np.array([[0.0, 3.0, 4.0]]), radius=5.0).tp == 1
    assert match_points(gt, np.array([[0.0, 3.0, 4.1]]), radius=5.0).tp == 0


def test_empty_conventions():
    """No predictions: P NaN, R 0, F1 0; nothing at all: NaN everywhere."""
    s = detection_scores(GT_PTS, np.zeros((0, 2)))
    assert math.isnan(s["precision"]) and s["recall"] == 0.0 and s["f1"] == 0.0
    s = detection_scores(np.zeros((0, 2)), np.zeros((0, 2)))
    assert all(math.isnan(s[k]) for k in ("precision", "recall", "f1"))
    s = detection_scores([], PRED_PTS)
    assert s["precision"] == 0.0 and math.isnan(s["recall"]) and s["f1"] == 0.0


# Classes: GT classes [1, 1, 2]; pred classes [2, 1, 2, 2] (pred 0 is the far FP).
#   per_class (PromptNucSeg): class 1: GT {0, 10}, preds {(2,0)} -> (2,0) matches (0,0):
#     tp 1, P 1, R 1/2, F1 2/3.
#     class 2: GT {30}, preds {(100,100), (1,0), (29,0)} -> only (29,0) matches: tp 1, P 1/3, R 1, F1 1/2.
#     cls_f1 = (2/3 + 1/2)/2 = 7/12.
#   hovernet: matched pairs (gt class, pred class) = (1,1) [g0-p1], (1,2) [g1-p2], (2,2) [g2-p3];
#     unmatched pred p0
#     is class 2, no unmatched GT. Class 1: tp_c 1, tn_c 1, fp_c 0, fn_c 1, fp_d 0, fn_d 0
#     -> F1 = 2·2/(2·2 + 2·1) = 4/6. Class 2: tp_c 1, tn_c 1, fp_c 1, fn_c 0, fp_d 1 -> 4/(4 + 2 + 1) = 4/7.
GT_CLS = np.array([1, 1, 2])
PRED_CLS = np.array([2, 1, 2, 2])


def test_per_class_scores_hand_worked():
    """PromptNucSeg per-class matching and HoVer-Net type F1 on the example above."""
    s = detection_scores(GT_PTS, PRED_PTS, pred_scores=SCORES, gt_classes=GT_CLS, pred_classes=PRED_CLS)
    assert (s["precision_1"], s["recall_1"], s["f1_1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert (s["precision_2"], s["recall_2"], s["f1_2"]) == pytest.approx((1 / 3, 1.0, 0.5))
    assert s["cls_f1"] == pytest.approx(7 / 12)
    h = detection_scores(
        GT_PTS, PRED_PTS, pred_scores=SCORES, gt_classes=GT_CLS, pred_classes=PRED_CLS, class_mode="hovernet"
    )
    assert h["f1_1"] == pytest.approx(4 / 6) and h["f1_2"] == pytest.approx(4 / 7)
    assert h["f1"] == s["f1"]
    with pytest.raises(ValueError, match="class arrays"):
        detection_scores(GT_PTS, PRED_PTS, gt_classes=GT_CLS[:2], pred_classes=PRED_CLS)


def test_summarize_pools_counts():
    """Pooling sums counts over images before dividing (PromptNucSeg), not a mean of per-image F1."""
    a = detection_scores(GT_PTS, PRED_PTS, pred_scores=SCORES, gt_classes=GT_CLS, pred_classes=PRED_CLS)
    b = detection_scores(GT_PTS, np.zeros((0, 2)), gt_classes=GT_CLS, pred_classes=np.zeros(0, int))
    pooled = summarize_detection([a, b])
    # tp 3, n_gt 6, n_pred 4 -> P 3/4, R 1/2, F1 6/10
    assert (pooled["precision"], pooled["recall"], pooled["f1"]) == pytest.approx((0.75, 0.5, 0.6))
    # class 1: tp 1, n_gt 4, n_pred 1 -> F1 2/5 ; class 2: tp 1, n_gt 2, n_pred 3 -> F1 2/5
    assert pooled["f1_1"] == pytest.approx(0.4) and pooled["f1_2"] == pytest.approx(0.4)


def test_bad_inputs():
    """Dimension mismatch and wrong score count are rejected."""
    with pytest.raises(ValueError, match="dimension"):
        match_points(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="pred_scores"):
        match_points(GT_PTS, PRED_PTS, pred_scores=[1.0])
