"""PromptNucSeg's segmentor loss: omega * focal + batch-global Dice + MSE between predicted and soft IoU (§3.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from promptsam.losses.focal import binary_focal_loss


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, *, eps: float = 1e-7) -> torch.Tensor:
    """1 - Dice of sigmoid(logits) and binary targets, summed over the whole batch (pytorch_toolbelt 'binary')."""
    probs = torch.sigmoid(logits.float())
    targets = targets.float()
    inter = (probs * targets).sum()
    return 1.0 - (2 * inter + eps) / (probs.sum() + targets.sum() + eps)


def soft_iou(logits: torch.Tensor, targets: torch.Tensor, *, eps: float = 1e-7) -> torch.Tensor:
    """Per-mask IoU of sigmoid(logits) (P, H, W) with targets: the segmentor's IoU target, gradient-carrying as in
    the official code."""
    probs = torch.sigmoid(logits.float()).flatten(1)
    targets = targets.float().flatten(1)
    inter = (probs * targets).sum(1)
    return (inter + eps) / (probs.sum(1) + targets.sum(1) - inter + eps)


def segmentor_loss(
    mask_logits: torch.Tensor, targets: torch.Tensor, iou_pred: torch.Tensor, *, focal_weight: float = 20.0
) -> dict[str, torch.Tensor]:
    """Loss terms for P prompted masks: logits (P, H, W), binary targets (P, H, W), predicted IoU (P,)."""
    if mask_logits.shape[0] == 0:
        zero = mask_logits.sum() * 0.0 + iou_pred.sum() * 0.0
        return {"loss": zero, "focal": zero, "dice": zero, "iou": zero}
    focal = binary_focal_loss(mask_logits.float(), targets.float(), gamma=2.0)
    dice = soft_dice_loss(mask_logits, targets)
    iou = F.mse_loss(iou_pred.float(), soft_iou(mask_logits, targets))
    return {"loss": focal_weight * focal + dice + iou, "focal": focal, "dice": dice, "iou": iou}
