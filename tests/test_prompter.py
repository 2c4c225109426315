"""PromptNucSeg point prompter: model shapes, matching, losses, decoding, point targets and a one-crop overfit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from promptsam.data.targets import nucleus_points
from promptsam.inference.points import decode_points, point_nms, size_nms
from promptsam.losses.focal import binary_focal_loss
from promptsam.losses.prompter import hungarian_match, prompter_loss
from promptsam.models.prompter import (
    FusedConvNeXtBlock,
    PointPrompter,
    anchor_grid,
    pad_to_multiple,
    sample_features,
)


@pytest.mark.parametrize("backbone", ["convnext_atto", "resnet18"])
@pytest.mark.parametrize("size", [(256, 256), (192, 320)])
def test_prompter_shapes(backbone: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = PointPrompter(backbone=backbone, num_classes=3, anchor_spacing=16, fpn_channels=32).eval()
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    m = (h // 16) * (w // 16)
    assert out["coords"].shape == (2, m, 2) and out["coords"].dtype == torch.float32
    assert out["logits"].shape == (2, m, 4)
    assert out["mask_logits"].shape == (2, 1, h, w)
    assert torch.isfinite(out["coords"]).all()


def test_fused_convnext_blocks_compute_timm_blocks() -> None:
    """The prompter's ConvNeXt blocks take the fused inference path (fc1 + GELU in one kernel, layer scale folded
    into fc2) and compute what timm's forward computes; the folded weights follow in-place parameter changes."""
    from timm.models.convnext import ConvNeXtBlock

    torch.manual_seed(0)
    model = PointPrompter(backbone="convnext_atto", fpn_channels=16).eval()
    blocks = [m for m in model.backbone.modules() if isinstance(m, ConvNeXtBlock)]
    assert blocks and all(type(b) is FusedConvNeXtBlock for b in blocks)
    block = blocks[0]
    with torch.no_grad():
        block.gamma.uniform_(0.5, 1.5)  # a non-trivial layer scale, so the folding matters
    x = torch.randn(2, block.conv_dw.in_channels, 24, 24)
    with torch.no_grad():
        fused = block(x)
        reference = ConvNeXtBlock.forward(block, x)
        assert torch.allclose(fused, reference, atol=1e-4, rtol=1e-4)
        block.gamma.mul_(2.0)  # in place: the cached folded weights must be rebuilt
        assert torch.allclose(block(x), ConvNeXtBlock.forward(block, x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(block(x), fused, atol=1e-2)
    y = block(x.requires_grad_())  # with autograd: timm's forward, gradients flow
    y.sum().backward()
    assert x.grad is not None and block.mlp.fc1.weight.grad is not None


def test_prompter_rejects_unpadded_input_and_pad_helper() -> None:
    model = PointPrompter(backbone="resnet18", fpn_channels=16, num_levels=2)
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 100, 128))
    padded, (h, w) = pad_to_multiple(torch.ones(1, 3, 100, 129), 32)
    assert padded.shape == (1, 3, 128, 160) and (h, w) == (100, 129)
    assert padded[..., :100, :129].eq(1).all() and padded[..., 100:, :].eq(0).all() and padded[..., 129:].eq(0).all()


def test_anchor_grid_and_exact_sampling() -> None:
    a = anchor_grid(32, 64, 16)
    assert a.shape == (2, 4, 2)
    assert a[0, 0].tolist() == [8.0, 8.0] and a[1, 3].tolist() == [56.0, 24.0]  # (x, y), row-major
    # a stride-4 map whose value is the x (or y) pixel-index coordinate of the cell centre: s·k + (s-1)/2
    k = torch.arange(16, dtype=torch.float32) * 4 + 1.5
    feats = torch.stack([k[None, :].expand(8, 16), k[:8, None].expand(8, 16)])[None]  # (1, 2, 8, 16)
    pts = torch.tensor([[[[1.5, 1.5], [10.0, 7.25], [61.5, 29.5]]]])
    got = sample_features(feats, pts, 4)[0, :, 0].T
    assert torch.allclose(got, pts[0, 0], atol=1e-5)


def test_backbone_weights_load_local_file(tmp_path) -> None:
    import timm

    full = timm.create_model("convnext_atto", pretrained=False)
    path = tmp_path / "atto.pth"
    torch.save(full.state_dict(), path)
    model = PointPrompter(backbone="convnext_atto", backbone_weights=path, fpn_channels=16, num_levels=1)
    assert torch.equal(model.backbone.state_dict()["stem_0.weight"], full.state_dict()["stem.0.weight"])
    from promptsam.errors import CheckpointError

    bad = dict(full.state_dict())
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="unexpected keys extra.weight"):
        PointPrompter(backbone="convnext_atto", backbone_weights=tmp_path / "bad.pth", fpn_channels=16)
    bad = dict(full.state_dict())
    del bad["stem.0.weight"]
    torch.save(bad, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing keys: stem_0.weight"):
        PointPrompter(backbone="convnext_atto", backbone_weights=tmp_path / "missing.pth", fpn_channels=16)


def _toy_predictions() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """3 anchors on a line, foreground probabilities 0.1 / 0.99 / 0.5 (C = 1), 2 GT points."""
    coords = torch.tensor([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    fg = torch.tensor([0.1, 0.99, 0.5])
    logits = torch.stack([fg.log(), (1 - fg).log()], dim=1)
    gt = torch.tensor([[19.0, 0.0], [1.0, 0.0]])
    return coords, logits, gt, torch.tensor([0, 0])


def test_hungarian_match_hand_worked() -> None:
    # cost = 0.1·dist - p_fg:   b0=(19,0)          b1=(1,0)
    #   a0 (p .10)             1.9-.10 = 1.80     0.1-.10 = 0.00
    #   a1 (p .99)             0.9-.99 = -.09     0.9-.99 = -.09
    #   a2 (p .50)             0.1-.50 = -.40     1.9-.50 = 1.40
    # best total: a1->b1, a2->b0 = -0.49 (the nearer a0->b1 gives only -0.40: the class term wins)
    coords, logits, gt, classes = _toy_predictions()
    pred, tgt = hungarian_match(coords, logits, gt, classes, alpha=0.1)
    assert pred.tolist() == [1, 2] and tgt.tolist() == [1, 0]
    # alpha large -> distance dominates: a0->b1, a2->b0
    pred, tgt = hungarian_match(coords, logits, gt, classes, alpha=10.0)
    assert pred.tolist() == [0, 2] and tgt.tolist() == [1, 0]
    pred, tgt = hungarian_match(coords, logits, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    assert pred.numel() == 0 and tgt.numel() == 0


def test_prompter_loss_hand_made() -> None:
    coords, logits, gt, classes = _toy_predictions()
    mask_logits = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    outputs = {
        "coords": torch.stack([coords, coords]),
        "logits": torch.stack([logits, logits]),
        "mask_logits": torch.stack([mask_logits, mask_logits])[:, None],
    }
    targets = [
        {"points": gt, "classes": classes, "mask": mask},
        {"points": torch.zeros(0, 2), "classes": torch.zeros(0, dtype=torch.long), "mask": mask[:1, :1]},
    ]
    beta, gamma = 0.2, 5e-3
    out = prompter_loss(outputs, targets, alpha=0.1, beta=beta, gamma=gamma, aux_weight=0.5)
    logp = logits.log_softmax(-1)
    # image 0: a1 -> class 0, a2 -> class 0, a0 -> background; image 1: all background
    num = -(logp[1, 0] + logp[2, 0] + beta * logp[0, 1] + beta * logp[:, 1].sum())
    assert out["cls"].item() == pytest.approx((num / (2 + beta * 4)).item(), rel=1e-5)
    assert out["reg"].item() == pytest.approx(gamma * (9.0**2 + 1.0**2) / 2, rel=1e-6)
    p = torch.sigmoid(mask_logits)
    t1 = torch.where(mask > 0, -((1 - p) ** 2) * p.log(), -(p**2) * (1 - p).log())
    # image 1's 1x1 mask [[1]] is zero-padded to [[1, 0], [0, 0]]
    t2 = torch.stack(
        [
            -((1 - p[0, 0]) ** 2) * p[0, 0].log(),
            -(p[0, 1] ** 2) * (1 - p[0, 1]).log(),
            -(p[1, 0] ** 2) * (1 - p[1, 0]).log(),
            -(p[1, 1] ** 2) * (1 - p[1, 1]).log(),
        ]
    )
    assert out["aux"].item() == pytest.approx(0.5 * torch.cat([t1.flatten(), t2]).mean().item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((out["cls"] + out["reg"] + out["aux"]).item())


def test_binary_focal_loss_matches_naive_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 6, generator=gen) * 4
    t = (torch.rand(4, 5, 6, generator=gen) > 0.5).float()
    p = torch.sigmoid(x.double())
    naive = torch.where(t > 0, -((1 - p) ** 2) * p.log(), -(p**2) * (1 - p).log())
    assert torch.allclose(binary_focal_loss(x, t, reduction="none").double(), naive, rtol=1e-5, atol=1e-7)
    assert binary_focal_loss(x, t).item() == pytest.approx(naive.mean().item(), rel=1e-5)
    assert binary_focal_loss(x, t, gamma=0.0).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(x, t).item(), rel=1e-5
    )
    extreme = binary_focal_loss(torch.tensor([200.0, -200.0]), torch.tensor([0.0, 1.0]), reduction="none")
    assert torch.isfinite(extreme).all() and extreme.tolist() == pytest.approx([200.0, 200.0])


def _outputs_for_decode() -> dict[str, torch.Tensor]:
    """C = 2: A kept, B its close lower-score duplicate, C far, D on negative mask, E background, F outside."""
    coords = torch.tensor([[10.0, 10.0], [15.0, 10.0], [50.0, 50.0], [30.0, 60.0], [40.0, 10.0], [70.0, -5.0]])
    probs = torch.tensor(
        [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.6, 0.2, 0.2], [0.2, 0.1, 0.7], [0.05, 0.85, 0.1]]
    )
    mask = torch.full((1, 1, 64, 80), 5.0)
    mask[..., 55:64, 25:35] = -5.0  # D sits here
    return {"coords": coords[None], "logits": probs.log()[None], "mask_logits": mask}


def test_decode_points_nms_mapf_background() -> None:
    outputs = _outputs_for_decode()
    (res,) = decode_points(outputs, image_size=(64, 72), nms_radius=12.0, mask_filter=True)
    assert res["points"].dtype == np.float32 and res["classes"].dtype == np.int64
    assert res["points"].tolist() == [[10.0, 10.0], [50.0, 50.0], [70.0, 0.0]]  # last clipped into the image
    assert res["classes"].tolist() == [1, 2, 2]
    assert res["scores"].tolist() == pytest.approx([0.9, 0.7, 0.85])
    (res,) = decode_points(outputs, image_size=(64, 72), nms_radius=12.0, mask_filter=False)
    assert [30.0, 60.0] in res["points"].tolist() and len(res["points"]) == 4
    (res,) = decode_points(outputs, image_size=(64, 72), nms_radius=0.0, mask_filter=False)
    assert len(res["points"]) == 5  # only the background anchor is gone
    (res,) = decode_points(outputs, image_size=(64, 72), nms_radius=12.0, score_threshold=0.8)
    assert res["points"].tolist() == [[10.0, 10.0], [70.0, 0.0]]
    for logit, kept in ((-6.0, True), (-5.0, False)):  # MAPF with a lower bar keeps D (logit -5 at its pixel)
        (res,) = decode_points(outputs, image_size=(64, 72), nms_radius=12.0, mask_filter_logit=logit)
        assert ([30.0, 60.0] in res["points"].tolist()) is kept


def test_decode_points_min_foreground_keeps_anchors_the_argmax_rule_drops() -> None:
    outputs = _outputs_for_decode()
    (res,) = decode_points(outputs, image_size=(64, 72), nms_radius=0.0, mask_filter=False, min_foreground=0.25)
    assert [40.0, 10.0] in res["points"].tolist() and len(res["points"]) == 6  # E: P(nucleus) 0.3, background argmax
    e = res["points"].tolist().index([40.0, 10.0])
    assert res["scores"][e] == pytest.approx(0.3) and res["classes"][e] == 1
    (res,) = decode_points(outputs, image_size=(64, 72), nms_radius=0.0, mask_filter=False, min_foreground=0.85)
    assert res["points"].tolist() == [[10.0, 10.0], [15.0, 10.0], [70.0, 0.0]]  # 1 - p(bg) = 0.95, 0.9, 0.9


def test_point_nms_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, size=(300, 2))
    scores = rng.uniform(size=300)
    keep = point_nms(pts, scores, 8.0)
    alive = np.ones(300, bool)
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    for i in np.argsort(-scores):
        if alive[i]:
            alive[dist[i] <= 8.0] = False
    assert keep.tolist() == np.flatnonzero(alive).tolist()
    assert point_nms(np.zeros((0, 2)), np.zeros(0), 5.0).size == 0


def test_size_nms_drops_second_points_in_large_nuclei_only() -> None:
    """Radius from the typical nucleus (discs of diameter ~32): a second point 14 px from the first inside one disc
    goes, the centres of two neighbouring discs 34 px apart stay; with small nuclei the fixed radius rules."""
    yy, xx = np.mgrid[:120, :200]
    centres = [(20, 20), (54, 20), (110, 20), (30, 80), (90, 80), (150, 80)]  # (x, y)
    fg = np.zeros((120, 200), bool)
    for cx, cy in centres:
        fg |= (xx - cx) ** 2 + (yy - cy) ** 2 < 16**2
    pts = np.array(centres + [(124, 20)], np.float64)  # the last one: a second point in the disc at (110, 20)
    scores = np.array([0.9, 0.8, 0.9, 0.9, 0.9, 0.9, 0.5])
    assert point_nms(pts, scores, 12.0).tolist() == list(range(7))
    assert size_nms(pts, scores, fg, radius=12.0, diameters=1.0).tolist() == [0, 1, 2, 3, 4, 5]
    assert size_nms(pts, scores, fg, radius=12.0, diameters=0.3).tolist() == list(range(7))  # 0.3 x 32 < 12
    assert size_nms(pts, scores, np.zeros_like(fg), radius=12.0, diameters=1.0).tolist() == list(range(7))


def test_nucleus_points_hand_made() -> None:
    labels = np.zeros((24, 24), np.int32)
    labels[2:5, 2:5] = 3  # square: centroid (x, y) = (3, 3)
    labels[8:17, 8:17] = 7  # thick "C" opening to the right: centroid (11.24, 12) is in the hole
    labels[10:15, 10:17] = 0
    labels[19:23, 2:8] = 9  # largest piece of nucleus 9: centroid (4.5, 20.5)
    labels[20, 12] = 9  # a stray 1-px piece of nucleus 9
    classes = np.zeros_like(labels)
    classes[labels == 3] = 2
    classes[2, 2] = 4
    classes[labels == 7] = 1
    classes[labels == 9] = 3
    points, point_classes = nucleus_points(labels, classes)
    assert points.dtype == np.float32 and points.shape == (3, 2)
    assert points[0].tolist() == [3.0, 3.0]
    assert points[2].tolist() == [4.5, 20.5]
    x, y = points[1]
    c_shape = labels == 7
    assert x == int(x) and y == int(y) and c_shape[int(y), int(x)]
    dist = ndimage.distance_transform_edt(np.pad(c_shape, 1))[1:-1, 1:-1]
    assert dist[int(y), int(x)] == dist.max()
    assert point_classes.tolist() == [2, 1, 3]
    assert nucleus_points(labels)[1].tolist() == [1, 1, 1]
    empty_pts, empty_cls = nucleus_points(np.zeros((5, 5), int))
    assert empty_pts.shape == (0, 2) and empty_cls.shape == (0,)


@pytest.mark.slow
def test_prompter_overfits_one_consep_crop(shared_data) -> None:
    from promptsam.io import read_image, read_labels
    from promptsam.metrics import detection_scores

    images = sorted((shared_data / "consep" / "train" / "images").glob("*.png"))
    if not images:
        pytest.skip("no CoNSeP training images")
    image = read_image(images[0])[:256, :256, :3]
    labels = read_labels(images[0].parents[1] / "labels" / f"{images[0].stem}.tif")[:256, :256]
    points, _ = nucleus_points(labels)
    x = torch.from_numpy(image.copy()).float().permute(2, 0, 1)[None] / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean[:, None, None]) / std[:, None, None]
    targets = [
        {
            "points": torch.from_numpy(points),
            "classes": torch.zeros(len(points), dtype=torch.long),
            "mask": torch.from_numpy((labels > 0).astype(np.float32)),
        }
    ]
    torch.manual_seed(0)
    model = PointPrompter(backbone="resnet18", fpn_channels=32, num_levels=2, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    losses = []
    for _ in range(20):  # ~1.1 -> ~0.05 (ratio ~20); F1 ~0.76 (eval-mode BN), ~0.95 (batch BN)
        loss = prompter_loss(model(x), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] / losses[-1] > 10
    model.eval()
    with torch.no_grad():
        (pred,) = decode_points(model(x), image_size=(256, 256))
    scores = detection_scores(points, pred["points"], pred_scores=pred["scores"], radius=12)
    assert scores["f1"] > 0.5


def test_nucleus_diameter_from_single_point_components() -> None:
    from promptsam.inference.points import nucleus_diameter

    yy, xx = np.mgrid[:200, :200]
    fg = np.zeros((200, 200), bool)
    centres = [(30, 30), (30, 100), (100, 30), (100, 100)]
    for cy, cx in centres:
        fg |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2  # four discs of diameter ~20
    fg[150:190, 120:190] = True  # a big blob holding two points: a cluster, not one nucleus
    points = np.array([[cx, cy] for cy, cx in centres] + [[130, 160], [180, 170]], np.float32)
    assert nucleus_diameter(fg, points) == pytest.approx(20.0, abs=0.5)
    assert nucleus_diameter(fg, points[:2]) is None  # too few single-point components to say
    assert nucleus_diameter(fg, np.zeros((0, 2), np.float32)) is None


def test_merge_views_keeps_points_seen_twice_at_their_mean() -> None:
    from promptsam.inference.points import merge_views

    def view(points, scores):
        return {"points": np.array(points, np.float32).reshape(-1, 2), "scores": np.array(scores, np.float32),
                "classes": np.ones(len(points), np.int64)}

    views = [view([[10, 10], [50, 50]], [0.9, 0.8]), view([[12, 10], [90, 90]], [0.7, 0.99]),
             view([[11, 13]], [0.6]), view([], [])]
    merged = merge_views(views, radius=12.0)
    # (10,10), (12,10), (11,13) vote for each other: one point at their mean; (50,50) and (90,90) were seen once
    assert merged["points"].shape == (1, 2) and merged["points"][0].tolist() == pytest.approx([11.0, 11.0])
    assert merged["scores"].tolist() == pytest.approx([0.9])
    assert len(merge_views(views, radius=12.0, min_votes=1)["points"]) == 3
