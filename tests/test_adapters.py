"""LoRA through peft: q and v only, each with its own pair, on both qkv layouts (SAM's ViT and TinyViT)."""

from __future__ import annotations

import pytest
import torch

from promptsam.models.adapters import add_lora, lora_part_mask
from promptsam.models.sam.tiny_vit import tiny_vit_5m


def test_part_mask_follows_the_qkv_layout():
    blocks = lora_part_mask(6, "qv", 1)  # [q q | k k | v v]
    assert blocks[:, 0].tolist() == [1, 1, 0, 0, 0, 0] and blocks[:, 1].tolist() == [0, 0, 0, 0, 1, 1]
    heads = lora_part_mask(6, "qv", 1, groups=2)  # head 0 [q k v], head 1 [q k v]
    assert heads[:, 0].tolist() == [1, 0, 0, 1, 0, 0] and heads[:, 1].tolist() == [0, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError):
        add_lora(torch.nn.Linear(2, 6), parts="qx")


def test_tinyvit_lora_on_q_and_v_never_touches_k():
    torch.manual_seed(0)
    encoder = add_lora(tiny_vit_5m(), rank=2, parts="qv")
    params = [p for p in encoder.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            if p.abs().sum() == 0:  # B starts at zero: give it the official block pattern to start from
                p.normal_(0, 0.05)
        for m in encoder.modules():
            if getattr(m, "qkv_per_head", False):
                m.qkv.lora_B["default"].weight.mul_(lora_part_mask(m.qkv.out_features, "qv", 2, m.num_heads))
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        encoder(torch.randn(1, 3, 256, 256)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    attention = [m for m in encoder.modules() if getattr(m, "qkv_per_head", False)]
    assert attention
    for m in attention:
        delta = (m.qkv.lora_B["default"].weight @ m.qkv.lora_A["default"].weight).view(m.num_heads, 3, -1)
        assert not delta[:, 1].any() and delta[:, 0].any() and delta[:, 2].any()  # per head: q and v, never k
