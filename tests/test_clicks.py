"""The simulated-click protocol of SAM-Med3D / M-SAM: first click on the foreground, then on the error region."""

from __future__ import annotations

import torch

from promptsam.inference.clicks import (
    clicked_lesions,
    first_clicks,
    first_lesion_clicks,
    lesion_components,
    next_clicks,
)


def test_first_click_lands_on_the_foreground_and_empty_items_are_padding():
    ref = torch.zeros(2, 6, 7, 8, dtype=torch.bool)
    ref[0, 2:4, 3:5, 1:3] = True
    coords, labels = first_clicks(ref, generator=torch.Generator().manual_seed(0))
    assert coords.shape == (2, 1, 3) and labels.tolist() == [[1], [-1]]
    z, y, x = coords[0, 0].long().tolist()
    assert ref[0, z, y, x]


def test_next_click_is_positive_on_a_miss_and_negative_on_a_false_alarm():
    ref = torch.zeros(2, 5, 5, 5, dtype=torch.bool)
    ref[:, 1, 1, 1] = True
    logits = torch.full((2, 5, 5, 5), -5.0)
    logits[1, 1, 1, 1] = 5.0  # item 1 finds the lesion ...
    logits[1, 3, 3, 3] = 5.0  # ... and adds one false positive
    coords, labels = next_clicks(logits, ref, generator=torch.Generator().manual_seed(1))
    assert labels.tolist() == [[1], [0]]
    assert coords[0, 0].tolist() == [1, 1, 1] and coords[1, 0].tolist() == [3, 3, 3]


def test_threshold_is_the_official_logit_half_and_a_perfect_prediction_gives_padding():
    ref = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    ref[0, 0, 0, 0] = True
    logits = torch.full((1, 4, 4, 4), -1.0)
    logits[0, 0, 0, 0] = 0.4  # above 0 but below the official 0.5: still a miss
    _, labels = next_clicks(logits, ref)
    assert labels.tolist() == [[1]]
    logits[0, 0, 0, 0] = 0.6
    _, labels = next_clicks(logits, ref)
    assert labels.tolist() == [[-1]]


def test_clicks_are_uniform_over_the_error_region():
    ref = torch.zeros(1, 10, 10, 10, dtype=torch.bool)
    ref[0, :5] = True  # 500 missed voxels
    logits = torch.full((1, 10, 10, 10), -5.0)
    logits[0, 5:] = 5.0  # 500 false positives
    gen = torch.Generator().manual_seed(0)
    positives = sum(int(next_clicks(logits, ref, generator=gen)[1][0, 0]) for _ in range(400))
    assert 150 < positives < 250


def test_per_lesion_targets_grow_as_positive_clicks_hit_lesions():
    """[A] `clicks.target: lesion`: each round's target is the union of the lesions hit by positive clicks so far."""
    ref = torch.zeros(1, 12, 12, 12, dtype=torch.bool)
    ref[0, 1:3, 1:3, 1:3] = True  # lesion A ...
    ref[0, 3, 3, 3] = True  # ... touching it only at a corner: the same lesion with 26-connectivity
    ref[0, 6:8, 6:8, 6:8] = True  # lesion B
    ref[0, 10, 1:4, 10] = True  # lesion C
    components = lesion_components(ref)
    assert int(components.max()) == 3

    def click(z, y, x, label):
        return torch.tensor([[[z, y, x]]], dtype=torch.float32), torch.tensor([[label]])

    a = (components == components[0, 1, 1, 1])[0]
    b = (components == components[0, 6, 6, 6])[0]
    clicks = [click(1, 1, 1, 1), click(0, 11, 0, 0), click(7, 7, 7, 1), click(6, 6, 6, 1), click(0, 0, 0, -1)]
    targets = clicked_lesions(components, clicks)
    assert len(targets) == 5 and targets[0].shape == ref.shape
    assert torch.equal(targets[0][0], a) and bool(targets[0][0, 3, 3, 3])  # first click: its whole lesion
    assert torch.equal(targets[1][0], a)  # a false-positive (negative) click adds nothing
    assert torch.equal(targets[2][0], a | b)  # a click on a missed lesion adds it
    assert torch.equal(targets[3][0], a | b) and torch.equal(targets[4][0], a | b)  # same lesion again; padding
    assert not targets[4][0, 10, 2, 10]  # lesion C was never clicked


def test_first_training_click_is_uniform_over_lesions_not_voxels():
    """[A] With per-lesion targets the first click picks a lesion uniformly, so a small lesion is not starved."""
    ref = torch.zeros(2, 20, 20, 20, dtype=torch.bool)
    ref[0, :10] = True  # 4000 voxels
    ref[0, 15, 15, 15] = True  # 1 voxel
    components = lesion_components(ref)
    gen = torch.Generator().manual_seed(0)
    small = 0
    for _ in range(200):
        coords, labels = first_lesion_clicks(components, generator=gen)
        assert labels.tolist() == [[1], [-1]]  # the empty item gets padding
        small += coords[0, 0].tolist() == [15, 15, 15]
    assert 70 < small < 130

