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
    only q and v, each with its own pair, `q += B_q A_q x`, `v += B_v A_v x` (SAMed, M-SAM, SAC). peft adapts whole
    Linear modules, so this is one peft LoRA of rank `rank * len(parts)` whose B is held block-diagonal: B starts at
    zero and the gradient of every other entry is masked, so they stay exactly zero under any optimiser (AdamW's
    weight decay included) and the function class is the official one. The rows of q, k and v follow the attention
    module: [q | k | v] blocks (SAM's ViT, SAM-Med3D), or per head when it sets `qkv_per_head` (TinyViT).
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
            qkv = getattr(module, "qkv", None)
            if hasattr(qkv, "lora_B") and "default" in qkv.lora_B:
                groups = module.num_heads if getattr(module, "qkv_per_head", False) else 1
                _hold_block_diagonal(qkv.lora_B["default"].weight, parts, rank, groups)
    return encoder


def onto_lora(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict of a model without LoRA laid out for `module`, the same model after `add_lora`: each adapted
    layer's weights become its peft base layer's, and the adapters keep `module`'s values (a zero update)."""
    own = module.state_dict()
    mapped = {}
    for key, value in state.items():
        parent, _, leaf = key.rpartition(".")
        wrapped = f"{parent}.base_layer.{leaf}"
        mapped[wrapped if key not in own and wrapped in own else key] = value
    mapped.update({k: v for k, v in own.items() if ".lora_" in k and k not in mapped})
    return mapped


def lora_part_mask(out_features: int, parts: str, rank: int, groups: int = 1) -> torch.Tensor:
    """(out_features, rank * len(parts)) 0/1 mask of the entries of B that update q, k or v through their own A rows.

    The outputs are `groups` consecutive [q | k | v] blocks (1 for SAM's ViT; the number of heads for TinyViT).
    """
    if out_features % (3 * groups):
        raise ValueError(f"a fused qkv projection has 3 x d outputs per group, got {out_features} for {groups}")
    g = out_features // groups
    d = g // 3
    mask = torch.zeros(out_features, rank * len(parts))
    for j, part in enumerate(parts):
        i = QKV.index(part)
        for start in range(0, out_features, g):
            mask[start + i * d : start + (i + 1) * d, j * rank : (j + 1) * rank] = 1
    return mask


def _hold_block_diagonal(weight: nn.Parameter, parts: str, rank: int, groups: int) -> None:
    mask = lora_part_mask(weight.shape[0], parts, rank, groups).to(weight.device, weight.dtype)
    with torch.no_grad():
        weight.mul_(mask)
    weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))
