"""PromptNucSeg prompter training: Hungarian anchor-to-point matching and the 3-term loss (methods.md §3.2, §3.5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from promptsam.losses.focal import binary_focal_loss

__all__ = ["hungarian_match", "prompter_loss"]


@torch.no_grad()
def hungarian_match(
    coords: torch.Tensor,
    logits: torch.Tensor,
    gt_points: torch.Tensor,
    gt_classes: torch.Tensor,
    *,
    alpha: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one match of (M, 2) predictions to (N, 2) GT points; return int64 (pred_idx, gt_idx) on CPU.

    Cost C_ij = α·‖â_i − b_j‖₂ − softmax(q_i)[c_j] (float64, as the official matcher), minimised with
    `scipy.optimize.linear_sum_assignment`; gt_classes are 0-based (0..C-1). pred_idx comes out sorted.
    N = 0 gives two empty tensors. Requires M >= N (every GT point gets an anchor).
    """
    n = int(gt_points.shape[0])
    empty = torch.zeros(0, dtype=torch.long)
    if n == 0:
        return empty, empty.clone()
    if coords.shape[0] < n:
        raise ValueError(f"{n} GT points but only {coords.shape[0]} anchors: lower anchor_spacing")
    dist = torch.cdist(coords.detach().double().cpu(), gt_points.double().cpu(), p=2)
    prob = logits.detach().double().cpu().softmax(-1)[:, gt_classes.long().cpu()]
    cost = (alpha * dist - prob).numpy()
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def _mask_target(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad an (h, w) target mask at the bottom/right to the (padded) prediction size."""
    h, w = mask.shape[-2:]
    if h > size[0] or w > size[1]:
        raise ValueError(f"target mask {h}x{w} is larger than the predicted mask {size[0]}x{size[1]}")
    return F.pad(mask.float(), (0, size[1] - w, 0, size[0] - h))


def prompter_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: Sequence[Mapping[str, torch.Tensor]],
    *,
    alpha: float = 0.1,
    beta: float = 0.2,
    gamma: float = 5e-3,
    aux_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Prompter loss vs per-image targets {"points": (N, 2) xy, "classes": (N,) 0-based, "mask": (H, W) 0/1}.

    Returns {"loss", "cls", "reg", "aux"} with loss = cls + reg + aux, each term already weighted:
    - cls = cross_entropy(logits, target, weight=[1, …, 1, β]) over all B·M anchors (weighted mean, so the
      denominator is N + β·#unmatched); matched anchors take their GT class, the rest background (index C);
    - reg = γ/N · Σ_matched ‖â − b‖² (squared error summed over x and y: the code, not the paper's norm), N =
      total GT points in the batch clamped to >= 1 (single process: no all-reduce);
    - aux = aux_weight · binary focal loss (γ=2, no α, mean over pixels) of mask_logits vs the mask, which is
      zero-padded bottom/right to the padded input size if smaller.
    `alpha` is the matching cost's distance weight. Class indices must be 0-based here (`nucleus_points`
    returns 1-based ids: subtract 1).
    """
    coords, logits, mask_logits = outputs["coords"], outputs["logits"], outputs["mask_logits"]
    b, m, k = logits.shape
    if len(targets) != b:
        raise ValueError(f"{len(targets)} targets for a batch of {b}")
    num_classes = k - 1
    target_classes = torch.full((b, m), num_classes, dtype=torch.long, device=logits.device)
    reg_sum = coords.new_zeros((), dtype=torch.float32)
    total = 0
    for i, tgt in enumerate(targets):
        points = tgt["points"].to(device=coords.device, dtype=torch.float32).reshape(-1, 2)
        classes = tgt["classes"].to(device=coords.device, dtype=torch.long).reshape(-1)
        if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"target classes must be 0-based in 0..{num_classes - 1}")
        pred_idx, gt_idx = hungarian_match(coords[i], logits[i], points, classes, alpha=alpha)
        pred_idx, gt_idx = pred_idx.to(coords.device), gt_idx.to(coords.device)
        target_classes[i, pred_idx] = classes[gt_idx]
        reg_sum = reg_sum + (coords[i, pred_idx].float() - points[gt_idx]).pow(2).sum()
        total += int(points.shape[0])
    weight = torch.ones(k, dtype=torch.float32, device=logits.device)
    weight[-1] = beta
    cls = F.cross_entropy(logits.float().transpose(1, 2), target_classes, weight=weight)
    reg = gamma * reg_sum / max(total, 1)
    masks = torch.stack([_mask_target(t["mask"].to(mask_logits.device), mask_logits.shape[-2:]) for t in targets])
    aux = aux_weight * binary_focal_loss(mask_logits[:, 0], masks, gamma=2.0)
    return {"loss": cls + reg + aux, "cls": cls, "reg": reg, "aux": aux}
