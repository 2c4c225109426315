"""Binary focal loss on logits (PromptNucSeg prompter aux head and segmentor, methods.md §3.5)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["binary_focal_loss"]


def binary_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma: float = 2.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Focal loss `(1 - p_t)^gamma * BCE` of logits vs same-shape targets in [0, 1]; no alpha term.

    Matches pytorch_toolbelt `BinaryFocalLoss()` defaults as PromptNucSeg uses them (alpha unset, not
    normalised): BCE = -(t·logσ(x) + (1-t)·logσ(-x)) from `logsigmoid` (stable for any logit) and
    p_t = exp(-BCE), with 1 - p_t computed as -expm1(-BCE) so well-classified pixels keep precision.
    Computed in float32 (or float64 if given); `reduction="mean"` averages over every element.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(dtype)
    t = targets.to(dtype)
    bce = -(t * F.logsigmoid(x) + (1.0 - t) * F.logsigmoid(-x))
    loss = (-torch.expm1(-bce)).pow(gamma) * bce
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
