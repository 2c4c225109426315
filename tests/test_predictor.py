"""SamPredictor: one embedding, many prompts in one batched call, masks back at image resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import randomize_
from promptsam.inference.predictor import SamPredictor
from promptsam.models import build_sam

segment_anything = pytest.importorskip("segment_anything")


@pytest.fixture(scope="module")
def pair():
    from test_sam_parity import reference_state_at, reference_vit_b

    ours = randomize_(build_sam("vit_b", image_size=256).eval(), seed=5)
    ref = reference_vit_b(256)
    ref.load_state_dict(reference_state_at(ours.state_dict(), 256), strict=True)
    return ref, ours


@torch.no_grad()
def test_predictor_matches_reference_pipeline(pair):
    """Same resized input fed to the reference SamPredictor: same masks, IoU and low-res logits."""
    from segment_anything import SamPredictor as RefPredictor

    ref, ours = pair
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)
    predictor = SamPredictor(ours, device="cpu")
    predictor.set_image(image)
    ref_pred = RefPredictor(ref)
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=predictor.input_size, mode="bilinear", antialias=True)
    ref_pred.set_torch_image(x, image.shape[:2])

    n = 7
    points = rng.uniform(0, [200, 300], (n, 2, 2)).astype(np.float32)
    labels = np.tile([1, 0], (n, 1))
    boxes = np.concatenate([rng.uniform(0, 90, (n, 2)), rng.uniform(110, 199, (n, 2))], 1).astype(np.float32)
    out = predictor.predict(
        points=points, point_labels=labels, boxes=boxes, multimask_output=True, chunk_size=3
    )
    # the official ResizeLongestSide.apply_coords scales x and y by new_w / w and new_h / h
    scale = np.array([predictor.input_size[1] / 200, predictor.input_size[0] / 300], np.float32)
    masks, iou, low = ref_pred.predict_torch(
        torch.from_numpy(points * scale),
        torch.from_numpy(labels),
        torch.from_numpy(boxes * np.tile(scale, 2)),
        multimask_output=True,
        return_logits=True,
    )
    assert out.masks.shape == (n, 3, 300, 200)
    assert np.abs(out.iou - iou.numpy()).max() < 1e-4
    assert np.abs(out.low_res_logits - low.numpy()).max() < 1e-4
    agree = (out.masks == (masks.numpy() > 0)).mean()
    assert agree > 0.999


@torch.no_grad()
def test_mixed_prompts_in_one_batch(pair):
    """Objects with and without boxes / mask prompts decode together and equal their separate decodes."""
    _, ours = pair
    rng = np.random.default_rng(1)
    predictor = SamPredictor(ours, device="cpu")
    predictor.set_image(rng.integers(0, 65535, (256, 256), dtype=np.uint16))  # grey 16-bit
    points = np.array([[[50, 60], [0, 0]], [[120, 40], [130, 45]]], np.float32)
    labels = np.array([[1, -1], [1, 0]])
    boxes = np.array([[40, 50, 70, 80], [np.nan] * 4], np.float32)
    masks = np.stack([np.full((64, 64), np.nan, np.float32), rng.normal(size=(64, 64)).astype(np.float32)])
    both = predictor.predict(points=points, point_labels=labels, boxes=boxes, mask_inputs=masks)
    assert both.masks.shape == (2, 1, 256, 256)
    # each row equals that object decoded alone: no interaction between objects of a batch
    first = predictor.predict(
        points=points[:1], point_labels=labels[:1], boxes=boxes[:1]
    )  # no mask = NaN mask
    second = predictor.predict(
        points=points[1:], point_labels=labels[1:], boxes=boxes[1:], mask_inputs=masks[1:]
    )
    assert np.abs(both.low_res_logits[0] - first.low_res_logits[0]).max() < 1e-4
    assert np.abs(both.low_res_logits[1] - second.low_res_logits[0]).max() < 1e-4
    assert np.abs(both.iou - np.concatenate([first.iou, second.iou])).max() < 1e-4
    # the mask prompt matters: without it object 1 comes out different
    plain = predictor.predict(points=points[1:], point_labels=labels[1:], boxes=boxes[1:])
    assert np.abs(plain.low_res_logits[0] - second.low_res_logits[0]).max() > 1e-2
    empty = predictor.predict(points=np.zeros((0, 1, 2)), point_labels=np.zeros((0, 1)))
    assert empty.masks.shape == (0, 1, 256, 256) and empty.iou.shape == (0, 1)


def test_predict_before_set_image_raises(pair):
    _, ours = pair
    with pytest.raises(RuntimeError, match="set_image"):
        SamPredictor(ours, device="cpu").predict(boxes=np.zeros((1, 4), np.float32))
