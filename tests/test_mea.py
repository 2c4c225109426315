"""M-SAM pieces: the Mask-Enhanced Adapter against a reference built from the official attention, and the network.

The reference MEA below transcribes the official `mea.py` (nanase1025/M-SAM) on top of medim's SAM-Med3D attention,
LayerNorm3d and MLP (the official attention math, relative-position term included), so it shares no attention code
with promptsam. Every parameter is randomised, the zero-initialised relative-position tables too.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from conftest import randomize_
from promptsam.models import MaskEnhancedAdapter, MSam, Sam3D
from promptsam.models.sam3d.image_encoder import ImageEncoderViT3D
from promptsam.models.sam3d.mask_decoder import MaskDecoder3D
from promptsam.models.sam3d.prompt_encoder import PromptEncoder3D

os.environ.setdefault("HF_HUB_OFFLINE", "1")
medim_sam = pytest.importorskip("medim.models.sam_med3d")

TOL = 1e-4


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 4, 1)


def channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 4, 1, 2, 3)


class RefSelfAttention(medim_sam.Attention):
    """Official MEA attention: LN, SAM-Med3D attention with rel-pos, + input, LN, MLP (channels-first in and out)."""

    def __init__(self) -> None:
        super().__init__(384, num_heads=6, qkv_bias=True, use_rel_pos=True, input_size=(8, 8, 8))
        self.norm1 = medim_sam.LayerNorm3d(384)
        self.norm2 = medim_sam.LayerNorm3d(384)
        self.mlp = medim_sam.MLPBlock(384, 4 * 384)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        shortcut = channels_last(z)
        x = super().forward(channels_last(self.norm1(z))) + shortcut
        return channels_first(self.mlp(channels_last(self.norm2(channels_first(x)))))


class RefBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for branch in ("image", "prompt"):
            setattr(self, f"{branch}_conv1", nn.Conv3d(384, 384, 3, padding=1))
            setattr(self, f"{branch}_conv2", nn.Conv3d(384, 384, 1))
            setattr(self, f"{branch}_norm", medim_sam.LayerNorm3d(384))
            for i in (1, 2, 3):
                setattr(self, f"{branch}_addnorm{i}", medim_sam.LayerNorm3d(384))
            setattr(self, f"{branch}_multiheadattn", RefSelfAttention())
        self.mlp1 = medim_sam.MLPBlock(384, 4 * 384)
        self.mlp2 = medim_sam.MLPBlock(384, 4 * 384)

    def forward(self, i: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gelu = nn.functional.gelu
        i1 = self.image_addnorm1(self.image_conv2(gelu(self.image_norm(self.image_conv1(i)))) + i)
        p1 = self.prompt_addnorm1(self.prompt_conv2(gelu(self.prompt_norm(self.prompt_conv1(p)))) + p)
        i2 = self.image_addnorm2(self.image_multiheadattn(i1 + i + p) + i1)
        i3 = self.image_addnorm3(channels_first(self.mlp1(channels_last(i2))) + i2)
        p2 = self.prompt_addnorm2(self.prompt_multiheadattn(i + p1 + p) + p1)
        p3 = self.prompt_addnorm3(channels_first(self.mlp2(channels_last(p2))) + p2)
        return i3, p3


class RefMEA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bidirectional_attentions = nn.ModuleList([RefBlock()])
        self.multi_head_self_attention = RefSelfAttention()
        self.add_norm = medim_sam.LayerNorm3d(384)
        self.add_norm2 = medim_sam.LayerNorm3d(384)
        self.add_norm3 = medim_sam.LayerNorm3d(384)
        self.add_norm4 = medim_sam.LayerNorm3d(384)
        self.mlp = medim_sam.MLPBlock(384, 4 * 384)

    def forward(self, image: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        p = self.add_norm2(prompt)
        i = self.add_norm3(image)
        i3, p3 = self.bidirectional_attentions[0](i, p)
        f = i3 + i + p3 + p
        o = self.add_norm(self.multi_head_self_attention(f) + f)
        return o + channels_first(self.mlp(channels_last(o)))


@pytest.fixture(scope="module")
def mea_pair():
    ref = randomize_(RefMEA().eval(), seed=21)
    ours = MaskEnhancedAdapter().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def test_mea_parameter_count_and_keys(mea_pair):
    ref, ours = mea_pair
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters()) == 17_145_024
    assert sum(p.numel() for p in ours.bidirectional_attentions.parameters()) == 14_183_040
    assert sum(p.numel() for p in ours.multi_head_self_attention.parameters()) == 1_777_344
    assert sum(p.numel() for p in ours.mlp.parameters()) == 1_181_568
    assert ours.multi_head_self_attention.rel_pos_d.shape == (15, 64)
    fresh = MaskEnhancedAdapter()
    assert all(not t.any() for name, t in fresh.state_dict().items() if "rel_pos" in name)  # zero-initialised


def test_mea_matches_reference_with_gradients(mea_pair):
    ref, ours = mea_pair
    gen = torch.Generator().manual_seed(22)
    image, prompt = torch.randn(2, 384, 8, 8, 8, generator=gen), torch.randn(2, 384, 8, 8, 8, generator=gen)
    out_ref, out = ref(image, prompt), ours(image, prompt)
    assert out.shape == (2, 384, 8, 8, 8)
    assert (out - out_ref).abs().max() < TOL
    out_ref.square().mean().backward()
    out.square().mean().backward()
    for name in (
        "multi_head_self_attention.rel_pos_d",
        "bidirectional_attentions.0.image_multiheadattn.rel_pos_w",
        "bidirectional_attentions.0.prompt_conv1.weight",
    ):
        grad_ref, grad = ref.get_parameter(name).grad, ours.get_parameter(name).grad
        assert grad_ref.abs().max() > 0
        assert (grad - grad_ref).abs().max() < 1e-4 * max(1.0, grad_ref.abs().max().item()), name


@torch.no_grad()
def test_msam_refine_matches_reference_decoder_with_mea_source(mea_pair):
    """M-SAM's decode = SAM-Med3D's decoder on src = MEA(E_I, E_M): feed the reference decoder that src, no dense."""
    ref_mea, ours_mea = mea_pair
    ref_prompt = medim_sam.PromptEncoder3D(
        embed_dim=384, image_embedding_size=(8, 8, 8), input_image_size=(128, 128, 128), mask_in_chans=16
    )
    ref_decoder = medim_sam.MaskDecoder3D(transformer_dim=384, num_multimask_outputs=3)
    randomize_(ref_prompt.eval(), seed=23)
    randomize_(ref_decoder.eval(), seed=24)
    gen = torch.Generator().manual_seed(25)
    ref_prompt.pe_layer.positional_encoding_gaussian_matrix.normal_(generator=gen)
    encoder = ImageEncoderViT3D(img_size=32, embed_dim=96, depth=2, num_heads=3, global_attn_indexes=(1,))
    sam = Sam3D(encoder, PromptEncoder3D(), MaskDecoder3D())  # the encoder is not run here: a small one will do
    sam.prompt_encoder.load_state_dict(ref_prompt.state_dict(), strict=True)
    sam.mask_decoder.load_state_dict(ref_decoder.state_dict(), strict=True)
    msam = MSam(sam, adapter=ours_mea).eval()

    emb = torch.randn(2, 384, 8, 8, 8, generator=gen)
    coords = torch.randint(0, 128, (2, 1, 3), generator=gen).float()
    labels = torch.tensor([[1], [0]])
    for previous in (torch.randn(2, 1, 32, 32, 32, generator=gen), None):
        masks = previous if previous is not None else torch.zeros(2, 1, 32, 32, 32)  # official first round: zeros
        sparse, dense = ref_prompt(points=(coords, labels), boxes=None, masks=masks)
        src = ref_mea(emb, dense)
        logits_ref, iou_ref = ref_decoder(src, ref_prompt.get_dense_pe(), sparse, torch.zeros_like(dense), False)
        logits, iou = msam.refine(emb, coords, labels, previous)
        assert logits.shape == (2, 1, 32, 32, 32) and iou.shape == (2, 1)
        assert logits_ref.abs().mean() > 0.1
        assert (logits - logits_ref).abs().max() < TOL
        assert (iou - iou_ref).abs().max() < TOL


def small_sam3d() -> Sam3D:
    """A small SAM-Med3D (32³ volumes, 2³ tokens) for the LoRA checks."""
    encoder = ImageEncoderViT3D(img_size=32, embed_dim=96, depth=2, num_heads=3, global_attn_indexes=(1,))
    prompt = PromptEncoder3D(image_embedding_size=(2, 2, 2), input_image_size=(32, 32, 32))
    return Sam3D(encoder, prompt, MaskDecoder3D())


def test_msam_lora_is_rank_4_on_q_and_v_with_unit_scaling_and_frozen_encoder():
    """LoRA keys, count (the official q/v LoRA: 12 x 12,288 = 147,456 on ViT-B), freezing, W + BA equivalence, and
    k never adapted: the masked entries of B stay zero through AdamW steps with weight decay."""
    from promptsam.models.adapters import lora_part_mask

    with torch.device("meta"):
        full = MSam(Sam3D(ImageEncoderViT3D(), PromptEncoder3D(), MaskDecoder3D()))
    lora = {n: p for n, p in full.named_parameters() if "lora_" in n}
    a = lora["sam.image_encoder.blocks.0.attn.qkv.lora_A.default.weight"]
    b = lora["sam.image_encoder.blocks.0.attn.qkv.lora_B.default.weight"]
    assert a.shape == (8, 768) and b.shape == (2304, 8)  # [A_q; A_v] and B with B_q, B_v blocks
    effective = a.numel() + int(lora_part_mask(2304, "qv", 4).sum())
    assert 12 * effective == 147_456 == 12 * 2 * (4 * 768 + 768 * 4)
    trainable = {n for n, p in full.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable if n.startswith("sam.image_encoder."))
    frozen_zeros = 12 * (b.numel() - int(lora_part_mask(2304, "qv", 4).sum()))
    assert sum(full.get_parameter(n).numel() for n in trainable) - frozen_zeros == (
        7_575_636 + 8_668 + 17_145_024 + 147_456)

    base = randomize_(small_sam3d().eval(), seed=31)
    merged = small_sam3d().eval()
    merged.load_state_dict(base.state_dict())
    msam = MSam(base).eval()
    gen = torch.Generator().manual_seed(32)
    params = [p for n, p in msam.named_parameters() if "lora_" in n]
    with torch.no_grad():
        for param in params:
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        for qkv in (blk.attn.qkv for blk in msam.sam.image_encoder.blocks):  # B as an official pair would be
            qkv.lora_B["default"].weight.mul_(lora_part_mask(qkv.out_features, "qv", 4))
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        msam.embed(torch.randn(1, 1, 32, 32, 32, generator=gen)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        for i, block in enumerate(merged.image_encoder.blocks):
            qkv = msam.sam.image_encoder.blocks[i].attn.qkv
            delta = qkv.lora_B["default"].weight @ qkv.lora_A["default"].weight
            d = delta.shape[0] // 3
            assert not delta[d : 2 * d].any() and delta[:d].any() and delta[2 * d :].any()  # q and v, never k
            lora_a = qkv.lora_A["default"].weight
            assert torch.allclose(delta[:d], qkv.lora_B["default"].weight[:d, :4] @ lora_a[:4])  # B_q A_q
            block.attn.qkv.weight += delta * qkv.scaling["default"]
        assert all(qkv.scaling["default"] == 1.0 for qkv in (b.attn.qkv for b in msam.sam.image_encoder.blocks))
        x = torch.randn(2, 1, 32, 32, 32, generator=gen)
        out, out_merged = msam.embed(x), merged.embed_volumes(x)
        assert out.shape == (2, 384, 2, 2, 2)
        assert (out - out_merged).abs().max() < TOL
