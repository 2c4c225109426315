"""Parameter-efficient fine-tuning of SAM encoders through the `peft` library."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def add_lora(encoder: nn.Module, *, rank: int = 4, alpha: float | None = None,
             targets: Sequence[str] = ("qkv",), dropout: float = 0.0) -> nn.Module:
    """Inject LoRA (rank `rank`, scaling alpha/rank = 1 by default) into the encoder's attention projections and
    freeze every other encoder weight; returns the encoder, changed in place.

    The fused `qkv` projection of SAM/TinyViT blocks gets one low-rank update for q, k and v together (SAMed and
    M-SAM adapt q and v only, which needs an unfused layer; peft adapts whole Linear modules).
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                        target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, encoder)
    for name, param in encoder.named_parameters():
        param.requires_grad_("lora_" in name)
    return encoder
