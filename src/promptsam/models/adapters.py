"""Parameter-efficient fine-tuning of SAM encoders through the `peft` library."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

QKV = "qkv"


def add_lora(encoder: nn.Module, *, rank: int = 4, alpha: float | None = None,
             targets: Sequence[str] = ("qkv",), parts: str | None = None, dropout: float = 0.0) -> nn.Module:
    """Inject LoRA (rank `rank`, scaling alpha/rank = 1 by default) into the encoder's attention projections and
    freeze every other encoder weight; returns the encoder, changed in place.

    Without `parts`, each fused `qkv` projection gets one low-rank update for q, k and v together. `parts="qv"` adapts
    only q and v, each with its own pair, `q += B_q A_q x`, `v += B_v A_v x` (SAMed, M-SAM, SAC), on projections whose
    output is laid out as [q | k | v] blocks (SAM's ViT, SAM-Med3D; not TinyViT, which interleaves them per head).
    peft adapts whole Linear modules, so this is one peft LoRA of rank `rank * len(parts)` whose B is held
    block-diagonal: B starts at zero and the gradient of every other entry is masked, so they stay exactly zero
    under any optimiser (AdamW's weight decay included) and the function class is the official one.
    """
    from peft import LoraConfig, inject_adapter_in_model

    n = 1
    if parts is not None:
        if not parts or any(p not in QKV for p in parts) or len(set(parts)) != len(parts):
            raise ValueError(f"parts must be distinct letters of 'qkv', got {parts!r}")
        n = len(parts)
    scale = (alpha if alpha is not None else rank) / rank
    config = LoraConfig(r=rank * n, lora_alpha=scale * rank * n, lora_dropout=dropout,
                        target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, encoder)
    for name, param in encoder.named_parameters():
        param.requires_grad_("lora_" in name)
    if parts is not None:
        for module in encoder.modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                _hold_block_diagonal(module.lora_B["default"].weight, parts, rank)
    return encoder


def lora_part_mask(out_features: int, parts: str, rank: int) -> torch.Tensor:
    """(out_features, rank * len(parts)) 0/1 mask of the entries of B that update q, k or v through their own A rows."""
    if out_features % 3:
        raise ValueError(f"a fused qkv projection has 3 x d outputs, got {out_features}")
    d = out_features // 3
    mask = torch.zeros(out_features, rank * len(parts))
    for j, part in enumerate(parts):
        i = QKV.index(part)
        mask[i * d : (i + 1) * d, j * rank : (j + 1) * rank] = 1
    return mask


def _hold_block_diagonal(weight: nn.Parameter, parts: str, rank: int) -> None:
    mask = lora_part_mask(weight.shape[0], parts, rank).to(weight.device, weight.dtype)
    with torch.no_grad():
        weight.mul_(mask)
    weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))
