"""Instance, object-level and PanNuke metrics: hand-worked cases, edge cases, naive and MONAI cross-checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from promptsam.metrics import (
    aggregated_dice,
    aji,
    aji_plus,
    contingency,
    mean_over_folds,
    object_dice,
    object_hausdorff,
    object_iou,
    object_metrics,
    pannuke_masks_to_maps,
    pannuke_pq,
    panoptic_quality,
    remap_label,
    score_classes,
    score_instances,
)

# Case A (one image row, ids non-sequential):
#   gt   = 1 1 1 1 0 2 2 0 0 0      |G1| = 4, |G2| = 2
#   pred = 5 5 5 0 0 7 7 7 9 9      |P5| = 3, |P7| = 3, |P9| = 2
#   overlaps: (G1,P5) = 3 -> IoU 3/(4+3-3) = 3/4 ; (G2,P7) = 2 -> IoU 2/(2+3-2) = 2/3 ; P9 overlaps nothing.
#   AJI = AJI+ = (3+2) / (4 + 3 [unions] + 2 [unpaired P9]) = 5/9
#   PQ: tp = 2, fp = 1, fn = 0 -> DQ = 2/2.5 = 0.8, SQ = (3/4 + 2/3)/(2 + 1e-6), PQ = DQ*SQ
#   Dice1: |G| = 6, |P| = 8, |G∩P| = 5 -> 10/14
GT_A = np.array([[1, 1, 1, 1, 0, 2, 2, 0, 0, 0]])
PRED_A = np.array([[5, 5, 5, 0, 0, 7, 7, 7, 9, 9]])
SQ_A = (3 / 4 + 2 / 3) / (2 + 1e-6)

# Case B (one prediction covering two GTs):
#   gt   = 1 1 1 0 2 2 2 0
#   pred = 3 3 3 3 3 3 3 0          |P3| = 7, both (G,P3) overlaps = 3 -> IoU 3/7 each
#   AJI  (pred reused): I = 3+3, U = 7+7 -> 6/14 = 3/7
#   AJI+ (unique): I = 3, U = 7 + 3 (unpaired GT) -> 0.3
#   PQ@0.5: IoU 3/7 < 0.5 -> tp 0, fp 1, fn 2 -> 0 ; PQ@0.4 (Hungarian): tp 1, fp 0, fn 1 -> DQ 2/3, SQ 3/7
GT_B = np.array([[1, 1, 1, 0, 2, 2, 2, 0]])
PRED_B = np.array([[3, 3, 3, 3, 3, 3, 3, 0]])


def test_case_a_hand_worked():
    """All instance scores of case A equal the numbers worked out by hand above."""
    s = score_instances(GT_A, PRED_A)
    assert s["aji"] == pytest.approx(5 / 9, abs=1e-12)
    assert s["aji_plus"] == pytest.approx(5 / 9, abs=1e-12)
    assert s["dq"] == pytest.approx(0.8, abs=1e-12)
    assert s["sq"] == pytest.approx(SQ_A, abs=1e-12)
    assert s["pq"] == pytest.approx(0.8 * SQ_A, abs=1e-12)
    assert s["dice"] == pytest.approx(10 / 14, abs=1e-12)
    assert (s["n_gt"], s["n_pred"]) == (2.0, 3.0)
    r = panoptic_quality(GT_A, PRED_A)
    assert (r.tp, r.fp, r.fn) == (2, 1, 0)
    assert r.iou_sum == pytest.approx(3 / 4 + 2 / 3, abs=1e-12)
    assert all(type(v) is float for v in s.values())


def test_case_b_aji_vs_aji_plus_and_low_threshold_pq():
    """Case B separates AJI (reuse) from AJI+ (unique) and PQ@0.5 from Hungarian PQ@0.4."""
    assert aji(GT_B, PRED_B) == pytest.approx(3 / 7, abs=1e-12)
    assert aji_plus(GT_B, PRED_B) == pytest.approx(0.3, abs=1e-12)
    r = panoptic_quality(GT_B, PRED_B)
    assert (r.tp, r.fp, r.fn, r.dq, r.sq, r.pq) == (0, 1, 2, 0.0, 0.0, 0.0)
    r = panoptic_quality(GT_B, PRED_B, match_iou=0.4)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert r.dq == pytest.approx(2 / 3, abs=1e-12)
    assert r.sq == pytest.approx((3 / 7) / (1 + 1e-6), abs=1e-12)
    with pytest.raises(ValueError, match="match_iou"):
        panoptic_quality(GT_B, PRED_B, match_iou=-0.1)


def test_pq_is_symmetric():
    """Swapping gt and pred swaps fp/fn and keeps DQ/SQ/PQ."""
    a, b = panoptic_quality(GT_A, PRED_A), panoptic_quality(PRED_A, GT_A)
    assert (a.tp, a.fp, a.fn) == (b.tp, b.fn, b.fp)
    assert a.pq == pytest.approx(b.pq, abs=1e-15)


@pytest.mark.parametrize(
    "dtype, big",
    [(np.int64, 2**40), (np.int64, 2**31), (np.uint64, 2**63 + 5), (np.uint32, 2**32 - 1)],
)
def test_huge_ids_match_small_ids(dtype, big):
    """Relabelling case A with huge ids (2**40 in int64, 2**63 in uint64) changes nothing."""
    gt = np.where(GT_A == 1, big, np.where(GT_A == 2, 17, 0)).astype(dtype)
    pred = np.where(PRED_A == 5, big - 1, np.where(PRED_A == 7, 3, np.where(PRED_A == 9, big, 0))).astype(
        dtype
    )
    assert score_instances(gt, pred) == score_instances(GT_A, PRED_A)
    assert remap_label(gt).max() == 2


def test_3d_maps():
    """A 3D map made of two copies of case A along depth gives the same ratios (areas double)."""
    gt, pred = np.stack([GT_A, GT_A]), np.stack([PRED_A, PRED_A])
    s3, s2 = score_instances(gt, pred), score_instances(GT_A, PRED_A)
    for key in s2:
        assert s3[key] == pytest.approx(s2[key], abs=1e-12)
    assert contingency(gt, pred).inter.tolist() == [6, 4]


def test_both_empty_is_nan_and_one_empty_is_zero():
    """Empty-map conventions: both empty -> NaN (counts 0); exactly one empty -> 0.0."""
    z = np.zeros((4, 5), np.int32)
    s = score_instances(z, z)
    for key in ("dice", "aji", "aji_plus", "dq", "sq", "pq"):
        assert math.isnan(s[key]), key
    r = panoptic_quality(z, z)
    assert (r.tp, r.fp, r.fn) == (0, 0, 0) and math.isnan(r.pq)
    one = np.zeros((4, 5), np.int32)
    one[1:3, 1:3] = 4
    for gt, pred in ((one, z), (z, one)):
        s = score_instances(gt, pred)
        for key in ("dice", "aji", "aji_plus", "dq", "sq", "pq"):
            assert s[key] == 0.0, key
    r = panoptic_quality(z, one)
    assert (r.tp, r.fp, r.fn) == (0, 1, 0)


def test_shape_mismatch_names_both_shapes():
    """Different shapes raise ValueError naming both shapes."""
    with pytest.raises(ValueError, match=r"\(1, 10\).*\(1, 8\)"):
        score_instances(GT_A, PRED_B)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        aji(np.zeros((2, 3), int), np.zeros((3, 2), int))


def test_bad_label_values():
    """Negative ids and non-integral floats are rejected; bool and integral floats are accepted."""
    with pytest.raises(ValueError, match="negative"):
        aji(np.array([[-1, 0]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="integer"):
        aji(np.array([[0.5, 0]]), np.array([[1, 0]]))
    assert aji(GT_A.astype(np.float32), PRED_A.astype(float)) == pytest.approx(5 / 9)
    assert score_instances(GT_A > 0, PRED_A > 0)["dice"] == pytest.approx(10 / 14)


def test_remap_label():
    """remap_label gives contiguous int32 ids 1..N in ascending original-id order, 0 stays 0."""
    lab = np.array([[0, 7, 7], [2**40, 0, 3]], np.int64)
    out = remap_label(lab)
    assert out.dtype == np.int32
    assert out.tolist() == [[0, 2, 2], [3, 0, 1]]
    assert remap_label(np.zeros((2, 2), np.uint8)).tolist() == [[0, 0], [0, 0]]
    u = np.array([0, 2**63, 5, 2**63], np.uint64)
    assert remap_label(u).tolist() == [0, 2, 1, 2]
    assert remap_label(np.ones((2, 2, 2), np.uint16)).shape == (2, 2, 2)


# ----------------------------------------------------------------------------------------------------
# Random label maps and a naive per-object reference (HoVer-Net stats_utils semantics written out with loops).


def random_rectangles(rng: np.random.Generator, shape=(48, 48), n=12) -> np.ndarray:
    """Label map of n random rectangles painted in order (later ones on top), random sparse ids."""
    lab = np.zeros(shape, np.int64)
    ids = rng.choice(10_000, size=n, replace=False) + 1
    for k in ids:
        r0, c0 = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        h, w = rng.integers(3, 14, size=2)
        lab[r0 : r0 + h, c0 : c0 + w] = k
    return lab


def random_blobs(rng: np.random.Generator, shape=(48, 48)) -> np.ndarray:
    """Connected components of thresholded smoothed noise."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=2.5)
    return ndimage.label(noise > np.quantile(noise, 0.6))[0]


def perturb(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    """A plausible prediction: shift, grow/shrink, drop one instance, split one, add a spurious one."""
    pred = np.roll(lab, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    if rng.random() < 0.5:
        grown = ndimage.grey_dilation(pred, size=(3, 3))
        pred = np.where(pred == 0, grown, pred)
    else:
        pred = np.where(ndimage.binary_erosion(pred > 0), pred, 0)
    ids = np.unique(pred)[1:]
    if ids.size:
        pred[pred == rng.choice(ids)] = 0
    if ids.size > 1:
        k = rng.choice(ids)
        rows = np.nonzero(pred == k)[0]
        if rows.size:
            pred[(pred == k) & (np.arange(pred.shape[0])[:, None] > np.median(rows))] = 99_999
    r0, c0 = rng.integers(0, 40, size=2)
    pred[r0 : r0 + 5, c0 : c0 + 5] = 77_777
    return pred


def naive_tables(gt, pred):
    """Dense inter/union tables by looping over objects (HoVer-Net style)."""
    gt, pred = remap_label(gt), remap_label(pred)
    ng, npd = gt.max(), pred.max()
    inter = np.zeros((ng, npd))
    union = np.zeros((ng, npd))
    for i in range(1, ng + 1):
        t = gt == i
        for j in np.unique(pred[t]):
            if j == 0:
                continue
            p = pred == j
            inter[i - 1, j - 1] = (t & p).sum()
            union[i - 1, j - 1] = (t | p).sum()
    g_area = np.array([(gt == i).sum() for i in range(1, ng + 1)])
    p_area = np.array([(pred == j).sum() for j in range(1, npd + 1)])
    return inter, union, g_area, p_area


def naive_aji(gt, pred, plus=False):
    """HoVer-Net get_fast_aji / get_fast_aji_plus with loops."""
    inter, union, g_area, p_area = naive_tables(gt, pred)
    iou = inter / (union + 1e-6)
    if plus:
        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] > 0
        rows, cols = rows[keep], cols[keep]
    else:
        cols = np.argmax(iou, axis=1)
        rows = np.nonzero(np.max(iou, axis=1) > 0)[0]
        cols = cols[rows]
    total_i = inter[rows, cols].sum()
    total_u = union[rows, cols].sum()
    total_u += sum(g_area[i] for i in range(len(g_area)) if i not in set(rows.tolist()))
    total_u += sum(p_area[j] for j in range(len(p_area)) if j not in set(cols.tolist()))
    return total_i / total_u


def naive_pq(gt, pred, match_iou=0.5):
    """HoVer-Net get_fast_pq with loops: (tp, fp, fn, iou_sum)."""
    inter, union, _, _ = naive_tables(gt, pred)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if match_iou >= 0.5:
        rows, cols = np.nonzero(iou > match_iou)
    else:
        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] > match_iou
        rows, cols = rows[keep], cols[keep]
    tp = len(rows)
    return tp, iou.shape[1] - tp, iou.shape[0] - tp, iou[rows, cols].sum()


def random_pairs(n: int, seed: int):
    """n seeded (gt, pred) pairs, alternating random rectangles and random blobs."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        gt = random_rectangles(rng) if k % 2 == 0 else random_blobs(rng)
        yield gt, perturb(rng, gt)


def test_aji_and_pq_match_naive_reference():
    """AJI, AJI+ and PQ (0.5 and Hungarian 0.3) equal the naive loop reference on 30 random maps."""
    for gt, pred in random_pairs(30, seed=1):
        assert aji(gt, pred) == pytest.approx(naive_aji(gt, pred), abs=1e-12)
        assert aji_plus(gt, pred) == pytest.approx(naive_aji(gt, pred, plus=True), abs=1e-12)
        for thr in (0.5, 0.3):
            r = panoptic_quality(gt, pred, match_iou=thr)
            tp, fp, fn, iou_sum = naive_pq(gt, pred, thr)
            assert (r.tp, r.fp, r.fn) == (tp, fp, fn)
            assert r.iou_sum == pytest.approx(iou_sum, abs=1e-12)


def test_component_wise_hungarian_matches_dense(monkeypatch):
    """The per-component Hungarian used for very large tables gives the same AJI+ / low-threshold PQ."""
    import promptsam.metrics.instance as inst

    pairs = list(random_pairs(12, seed=3))
    dense = [(aji_plus(g, p), panoptic_quality(g, p, match_iou=0.2)) for g, p in pairs]
    monkeypatch.setattr(inst, "_DENSE_LSA_MAX_CELLS", 0)
    for (g, p), (a_dense, pq_dense) in zip(pairs, dense, strict=True):
        assert aji_plus(g, p) == pytest.approx(a_dense, abs=1e-12)
        pq = panoptic_quality(g, p, match_iou=0.2)
        assert (pq.tp, pq.fp, pq.fn) == (pq_dense.tp, pq_dense.fp, pq_dense.fn)
        assert pq.iou_sum == pytest.approx(pq_dense.iou_sum, abs=1e-12)


def test_pq_matches_monai_on_random_maps():
    """PQ/SQ/DQ agree with MONAI compute_panoptic_quality on 60 seeded random maps to 1e-6."""
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_panoptic_quality

    n = 0
    for gt, pred in random_pairs(60, seed=2):
        g = torch.from_numpy(remap_label(gt))
        p = torch.from_numpy(remap_label(pred))
        tp, fp, fn, iou_sum = compute_panoptic_quality(p, g, output_confusion_matrix=True).tolist()
        r = panoptic_quality(gt, pred)
        assert (r.tp, r.fp, r.fn) == (int(tp), int(fp), int(fn))
        assert r.iou_sum == pytest.approx(iou_sum, abs=1e-5)
        if tp + fp + fn == 0:
            continue
        # MONAI's own formulas on its confusion counts (rq = DQ), plus one direct call for PQ
        den = tp + 0.5 * fp + 0.5 * fn
        assert r.dq == pytest.approx(tp / (den + 1e-6), abs=1e-6)
        assert r.sq == pytest.approx(iou_sum / (tp + 1e-6), abs=1e-6)
        assert r.pq == pytest.approx(float(compute_panoptic_quality(p, g, metric_name="pq")), abs=1e-6)
        n += 1
    assert n == 60


# ----------------------------------------------------------------------------------------------------
# Object-level (DES-SAM / GlaS) metrics, hand-worked on case A and case B.
#   GT side weights |G|/6, pred side weights |P|/8; P9 has no overlap (Dice/IoU 0).
#   Dice: GT side 4/6·6/7 + 2/6·4/5 = 88/105 ; pred side 3/8·6/7 + 3/8·4/5 + 0 = 87/140
#   IoU : GT side 4/6·3/4 + 2/6·2/3 = 13/18 ; pred side 3/8·3/4 + 3/8·2/3 = 17/32
#   Hausdorff (columns): H(G1,P5) = 1, H(G2,P7) = 1; P9 (cols 8-9) -> nearest by H among window candidates:
#     H(P9,G1) = max(9-3, 8-0) = 8, H(P9,G2) = max(9-6, 8-5) = 3 -> 3.
#   GT side 1, pred side 3/8 + 3/8 + 2/8·3 = 1.5 -> object Hausdorff (1 + 1.5)/2 = 1.25
#   Aggregated Dice A: 2·(3+2) / ((4+3) + (2+3) + 2) = 10/14 ; B: both GTs take P3 -> 2·6 / (10+10) = 0.6


def test_object_metrics_hand_worked():
    """Object Dice/IoU/Hausdorff and aggregated Dice of cases A and B equal the hand-worked numbers."""
    assert object_dice(GT_A, PRED_A) == pytest.approx((88 / 105 + 87 / 140) / 2, abs=1e-12)
    assert object_iou(GT_A, PRED_A) == pytest.approx((13 / 18 + 17 / 32) / 2, abs=1e-12)
    assert object_hausdorff(GT_A, PRED_A) == pytest.approx(1.25, abs=1e-12)
    assert aggregated_dice(GT_A, PRED_A) == pytest.approx(10 / 14, abs=1e-12)
    assert aggregated_dice(GT_B, PRED_B) == pytest.approx(0.6, abs=1e-12)
    m = object_metrics(GT_A, PRED_A)
    assert set(m) == {"dice", "iou", "haus", "adice"}
    perfect = object_metrics(GT_A, GT_A)
    assert (perfect["dice"], perfect["iou"], perfect["haus"], perfect["adice"]) == (1.0, 1.0, 0.0, 1.0)


def test_object_metrics_edge_cases():
    """Objects: both empty -> NaN; one empty -> 0 overlap scores and NaN Hausdorff; far objects -> 1000."""
    z = np.zeros((3, 600), int)
    for v in object_metrics(z, z).values():
        assert math.isnan(v)
    one = z.copy()
    one[1, 1:3] = 1
    m = object_metrics(one, z)
    assert (m["dice"], m["iou"], m["adice"]) == (0.0, 0.0, 0.0) and math.isnan(m["haus"])
    far = z.copy()
    far[1, 590:592] = (
        1  # 589 px away: outside DES-SAM's largest window (±400) -> missing_distance on both sides
    )
    assert object_hausdorff(one, far) == pytest.approx(1000.0)
    assert object_hausdorff(one, far, missing_distance=7.0) == pytest.approx(7.0)


# ----------------------------------------------------------------------------------------------------
# Class-aware PQ and the PanNuke protocol.
#   Case A with classes: G1 -> 1, G2 -> 2 ; P5 -> 1, P7 -> 1, P9 -> 2
#   class 1: GT {G1}, pred {P5, P7}: G1-P5 IoU 3/4 -> tp 1, fp 1 -> DQ 2/3, SQ 0.75/(1+1e-6) -> PQ ~ 0.5
#   class 2: GT {G2}, pred {P9}: no overlap -> PQ 0 ; mPQ = nanmean(0.5, 0) ; bPQ = PQ of case A


def _class_maps():
    gt_cls = np.where(GT_A == 1, 1, np.where(GT_A == 2, 2, 0))
    pred_cls = np.where(np.isin(PRED_A, [5, 7]), 1, np.where(PRED_A == 9, 2, 0))
    return gt_cls, pred_cls


def test_score_classes_hand_worked():
    """Per-class PQ, mPQ and bPQ of case A with classes, from class maps and from {id: class} mappings."""
    gt_cls, pred_cls = _class_maps()
    pq1 = (2 / 3) * 0.75 / (1 + 1e-6)
    s = score_classes(GT_A, gt_cls, PRED_A, pred_cls, classes=(1, 2, 3))
    assert s["pq_1"] == pytest.approx(pq1, abs=1e-12)
    assert s["pq_2"] == 0.0
    assert math.isnan(s["pq_3"])
    assert s["mpq"] == pytest.approx(pq1 / 2, abs=1e-12)
    assert s["bpq"] == pytest.approx(0.8 * SQ_A, abs=1e-12)
    s2 = score_classes(GT_A, {1: 1, 2: 2}, PRED_A, {5: 1, 7: 1, 9: 2})
    assert s2 == {k: v for k, v in s.items() if k != "pq_3"}


def test_pannuke_protocol():
    """Image mPQ nanmean over classes, tissue nanmean over images, report nanmean over tissues."""
    gt_cls, pred_cls = _class_maps()
    z = np.zeros_like(GT_A)
    out = pannuke_pq(
        [GT_A, z, GT_A],
        [gt_cls, z, gt_cls],
        [PRED_A, PRED_A, GT_A],
        [pred_cls, pred_cls, gt_cls],
        ["Breast", "Breast", "Colon"],
        classes=(1, 2),
    )
    pq1 = (2 / 3) * 0.75 / (1 + 1e-6)
    perfect = 1 / (1 + 1e-6)  # one matched instance per class: SQ = 1/(1 + 1e-6)
    perfect_b = 2 / (2 + 1e-6)  # bPQ of image 3: two matched instances
    # image 2 has an empty GT -> NaN everywhere, so Breast = image 1 only
    assert out["tissues"]["Breast"]["mpq"] == pytest.approx(pq1 / 2, abs=1e-12)
    assert out["tissues"]["Breast"]["bpq"] == pytest.approx(0.8 * SQ_A, abs=1e-12)
    assert out["tissues"]["Colon"]["mpq"] == pytest.approx(perfect, abs=1e-12)
    assert out["mpq"] == pytest.approx((pq1 / 2 + perfect) / 2, abs=1e-12)
    assert out["bpq"] == pytest.approx((0.8 * SQ_A + perfect_b) / 2, abs=1e-12)
    assert out["classes"][2] == pytest.approx((0.0 + perfect) / 2, abs=1e-12)
    assert math.isnan(out["images"][1]["mpq"]) and math.isnan(out["images"][1]["bpq"])
    assert mean_over_folds([{"mpq": 0.2, "bpq": 0.4}, {"mpq": 0.4, "bpq": 0.6}]) == pytest.approx(
        {"mpq": 0.3, "bpq": 0.5}
    )
    with pytest.raises(ValueError, match="one entry per image"):
        pannuke_pq([GT_A], [gt_cls], [PRED_A], [pred_cls], ["Breast", "Colon"])


def test_pannuke_masks_to_maps():
    """Native (H, W, 6) masks become one instance map with unique ids plus a 1-based class map."""
    masks = np.zeros((2, 3, 6), np.float64)
    masks[0, 0, 0] = masks[0, 1, 0] = 12  # class 1, instance 12
    masks[1, 2, 2] = 12  # class 3 reuses id 12: must become a different instance
    masks[..., 5] = (masks[..., :5].sum(-1) == 0).astype(float)  # background channel is ignored
    inst, cls = pannuke_masks_to_maps(masks)
    assert cls.tolist() == [[1, 1, 0], [0, 0, 3]]
    assert inst[0, 0] == inst[0, 1] != inst[1, 2] and inst[0, 2] == 0
