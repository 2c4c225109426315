"""The simulated-click protocol of SAM-Med3D / M-SAM: first click on the foreground, then on the error region."""

from __future__ import annotations

import torch

from promptsam.inference.clicks import first_clicks, next_clicks


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
