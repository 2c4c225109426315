"""Losses of the 3D interactive segmentor (M-SAM, methods.md §5.3) and of the lesion detector."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def dice_ce_loss() -> nn.Module:
    """MONAI DiceCELoss as M-SAM configures it: sigmoid, squared denominator, mean over the batch."""
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True, squared_pred=True, reduction="mean")


def click_rounds_loss(round_logits: Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor], *,
                      rounds: str = "all", loss: nn.Module | None = None) -> torch.Tensor:
    """Loss over the refinement rounds: summed over all rounds (the released code) or on the last one (rebuttal).

    `round_logits`: per round (B, 1, D, H, W) logits; `target`: (B, 1, D, H, W) binary, or one such per round.
    """
    if rounds not in ("all", "last"):
        raise ValueError(f"rounds must be 'all' or 'last', got {rounds!r}")
    loss = loss or dice_ce_loss()
    targets = [target] * len(round_logits) if isinstance(target, torch.Tensor) else list(target)
    pairs = list(zip(round_logits, targets, strict=True))
    chosen = pairs if rounds == "all" else pairs[-1:]
    return sum(loss(logits.float(), t.float()) for logits, t in chosen)
