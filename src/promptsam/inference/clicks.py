"""Simulated clicks for interactive 3D (and 2D) segmentation: the protocol of SAM-Med3D and M-SAM (methods.md §2, §5.1).

Round 1 clicks a uniformly random foreground voxel of the reference mask (positive). Each later round clicks a
uniformly random voxel of the error region of the current prediction: a false negative gives a positive click, a
false positive a negative one (the official `get_next_click3D_torch_2`, prediction binarised at logit > 0.5). The
reference is the ground truth in evaluation and training; in promptsam's automatic mode it is the lesion detector's
mask, so the same refinement runs without any ground truth.
"""

from __future__ import annotations

import torch

LOGIT_THRESHOLD = 0.5  # the official code binarises logits at 0.5 (not 0), methods.md §2


def _random_voxel(region: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
    """Index tuple (ndim,) of a uniformly random True voxel of `region`, or None when it is empty."""
    flat = region.reshape(-1)
    count = int(flat.sum())
    if count == 0:
        return None
    k = int(torch.randint(count, (1,), generator=generator))
    index = torch.nonzero(flat, as_tuple=False)[k, 0]
    return torch.stack(torch.unravel_index(index, region.shape))


def first_clicks(reference: torch.Tensor, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """One positive click per item of a boolean batch (B, *spatial): coords (B, 1, ndim) float, labels (B, 1).

    Items with an empty reference get a padding click (label -1, coords 0), which the prompt encoder ignores.
    """
    coords = torch.zeros(reference.shape[0], 1, reference.ndim - 1)
    labels = torch.full((reference.shape[0], 1), -1, dtype=torch.long)
    for b, ref in enumerate(reference.bool()):
        voxel = _random_voxel(ref, generator)
        if voxel is not None:
            coords[b, 0], labels[b, 0] = voxel.float(), 1
    return coords, labels


def next_clicks(logits: torch.Tensor, reference: torch.Tensor, *, generator: torch.Generator | None = None,
                threshold: float = LOGIT_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per item from the error region of `logits` vs `reference` (both (B, *spatial)).

    A false-negative voxel gives a positive click (label 1), a false-positive voxel a negative one (label 0), drawn
    uniformly over their union. A perfect prediction gives a padding click (label -1).
    """
    pred = logits.detach() > threshold
    ref = reference.bool()
    coords = torch.zeros(ref.shape[0], 1, ref.ndim - 1)
    labels = torch.full((ref.shape[0], 1), -1, dtype=torch.long)
    for b in range(ref.shape[0]):
        voxel = _random_voxel(pred[b] ^ ref[b], generator)
        if voxel is not None:
            coords[b, 0] = voxel.float()
            labels[b, 0] = int(ref[b][tuple(voxel)])  # missed lesion -> positive; wrongly included -> negative
    return coords, labels
