"""Simulated clicks for interactive 3D (and 2D) segmentation: the protocol of SAM-Med3D and M-SAM (methods.md §2, §5.1).

Round 1 clicks a uniformly random foreground voxel of the reference mask (positive). Each later round clicks a
uniformly random voxel of the error region of the current prediction: a false negative gives a positive click, a
false positive a negative one (the official `get_next_click3D_torch_2`, prediction binarised at logit > 0.5). The
reference is the ground truth in evaluation and training; in promptsam's automatic mode it is the lesion detector's
mask, so the same refinement runs without any ground truth. Training may instead score each round against the
lesions clicked so far (`clicked_lesions`, [A]), its first click then drawn uniformly over lesions rather than voxels
(`first_lesion_clicks`); later clicks and evaluation always use the paper's simulator. `paint_clicks` ([A]) also
writes each click into the low-res mask prompt, the way a from-scratch model can learn to follow it.
"""

from __future__ import annotations

import numpy as np
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


def lesion_components(reference: torch.Tensor) -> torch.Tensor:
    """Connected components (26-connectivity) of each item of a boolean batch (B, *spatial), as int labels."""
    from scipy import ndimage

    structure = np.ones((3,) * (reference.ndim - 1), bool)
    return torch.stack([torch.from_numpy(ndimage.label(ref.cpu().numpy(), structure=structure)[0].astype(np.int64))
                        for ref in reference.bool()])


def first_lesion_clicks(components: torch.Tensor, *, generator: torch.Generator | None = None) -> tuple[
        torch.Tensor, torch.Tensor]:
    """[A] Training with per-lesion targets: a uniformly random lesion, then a uniformly random voxel of it.

    The paper's first click is uniform over voxels, so one confluent lesion (94 % of patient19's lesion voxels)
    would take almost every first click; uniform over lesions, most sequences start on a small one. Empty items get
    a padding click, as in `first_clicks`.
    """
    coords = torch.zeros(components.shape[0], 1, components.ndim - 1)
    labels = torch.full((components.shape[0], 1), -1, dtype=torch.long)
    for b, comp in enumerate(components):
        count = int(comp.max())
        if count:
            k = 1 + int(torch.randint(count, (1,), generator=generator))
            coords[b, 0], labels[b, 0] = _random_voxel(comp == k, generator).float(), 1
    return coords, labels


def clicked_lesions(components: torch.Tensor, clicks: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Per-round targets (B, *spatial) bool: the union of the components the positive clicks so far fell in.

    [A] per-lesion click targets (`clicks.target: lesion`): the first click's lesion, then each later positive click
    adds the lesion it lands in; negative and padding clicks add nothing. `components` from `lesion_components`,
    `clicks` one (coords (B, 1, ndim), labels (B, 1)) pair per round, as `first_clicks` / `next_clicks` give them.
    """
    hit = torch.zeros(components.shape[0], int(components.max()) + 1, dtype=torch.bool)
    targets = []
    for coords, labels in clicks:
        for b in range(components.shape[0]):
            if int(labels[b, 0]) == 1:
                hit[b, components[b][tuple(coords[b, 0].long().tolist())]] = True
        hit[:, 0] = False  # a positive click on background (not from the simulator) selects nothing
        targets.append(torch.gather(hit, 1, components.reshape(len(hit), -1)).reshape(components.shape))
    return targets


CLICK_LOGIT = 5.0  # [A] value painted into the mask prompt at a click (sigmoid 0.99 past the 0.5 cut)


def paint_clicks(low_logits: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor, *, volume_size: int,
                 radius: float, value: float = CLICK_LOGIT) -> torch.Tensor:
    """[A] Clicks written into the low-res mask prompt: +`value` around a positive click, -`value` around a negative.

    `low_logits` (B, 1, s, s, s) previous low-res logits of a (B, 1, S, S, S) input with S = `volume_size`; `coords`
    (B, P, 3) voxel indices of the input, `labels` (B, P) (padding, -1, paints nothing). A ball of `radius` input
    voxels around the click is painted, at least the low-res voxel holding it. Returns a new tensor.

    Why: SAM's sparse click token reaches the mask only through attention between its Fourier position code and the
    image tokens' code, which a from-scratch model learns far too slowly (the synthetic click test and the v1/v2 CPU
    models ignore the click's position); the dense mask prompt goes through convolutions and is local by construction,
    so a click painted into it is followed after a few hundred steps. The sparse token is still fed, as officially.
    """
    out = low_logits.clone()
    size = low_logits.shape[-1]
    scale = volume_size / size
    centres = (torch.arange(size, device=low_logits.device, dtype=torch.float32) + 0.5) * scale - 0.5
    for b in range(coords.shape[0]):
        for point, label in zip(coords[b].float().to(low_logits.device), labels[b].tolist(), strict=True):
            if label not in (0, 1):
                continue
            d = [(centres - p) ** 2 for p in point]
            ball = d[0][:, None, None] + d[1][None, :, None] + d[2][None, None, :] <= radius**2
            ball[tuple(int(v) for v in (point / scale).long().clamp(0, size - 1))] = True
            out[b, 0][ball] = value if label == 1 else -value
    return out
