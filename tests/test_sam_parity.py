"""Parity of promptsam's SAM against the reference `segment-anything` on the same random weights."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_
from promptsam.models import build_sam
from promptsam.models.sam.image_encoder import rel_pos_table, resize_pos_embed

segment_anything = pytest.importorskip("segment_anything")
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

TOL = 1e-4


def reference_vit_b(image_size: int) -> Sam:
    """The reference SAM ViT-B built for a square input of `image_size` (its own builder fixes 1024)."""
    grid = image_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=12,
            embed_dim=768,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=torch.nn.LayerNorm,
            num_heads=12,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[2, 5, 8, 11],
            window_size=14,
            out_chans=256,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    ).eval()


def reference_state_at(state: dict, image_size: int) -> dict:
    """A 1024-shaped ViT-B state_dict resized for the reference built at `image_size`, as our forward resizes it."""
    grid = image_size // 16
    state = dict(state)
    state["image_encoder.pos_embed"] = resize_pos_embed(state["image_encoder.pos_embed"], (grid, grid))
    for i in (2, 5, 8, 11):
        for axis in ("h", "w"):
            key = f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
            # the reference's get_rel_pos resizes a 127-long table linearly to 2 * grid - 1 entries
            table = torch.nn.functional.interpolate(state[key].T[None], size=2 * grid - 1, mode="linear")[0].T
            assert torch.allclose(rel_pos_table(table, grid), rel_pos_table(state[key], grid))
            state[key] = table
    return state


def prompts(n: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.rand(n, 4, generator=gen) * size / 2
    boxes[:, 2:] += boxes[:, :2]
    return {
        "points": torch.rand(n, 3, 2, generator=gen) * size,
        "labels": torch.randint(0, 2, (n, 3), generator=gen),
        "boxes": boxes,
        "masks": torch.randn(n, 1, size // 4, size // 4, generator=gen),
    }


def assert_decoder_parity(ref, ours, embedding: torch.Tensor, size: int) -> None:
    p = prompts(6, size)
    cases = [
        {"points": (p["points"], p["labels"]), "boxes": None, "masks": None},
        {"points": None, "boxes": p["boxes"], "masks": p["masks"]},
        {"points": (p["points"], p["labels"]), "boxes": p["boxes"], "masks": p["masks"]},
    ]
    for case in cases:
        for multimask in (True, False):
            sparse, dense = ref.prompt_encoder(**case)
            m_ref, iou_ref = ref.mask_decoder(
                embedding, ref.prompt_encoder.get_dense_pe(), sparse, dense, multimask
            )
            m_ours, iou_ours = ours.decode(
                embedding,
                points=case["points"],
                boxes=case["boxes"],
                mask_inputs=case["masks"],
                multimask_output=multimask,
            )
            assert m_ours.shape == m_ref.shape == (6, 3 if multimask else 1, size // 4, size // 4)
            assert (m_ours - m_ref).abs().max() < TOL
            assert (iou_ours - iou_ref).abs().max() < TOL


@pytest.fixture(scope="module")
def vit_b_pair():
    ref = randomize_(reference_vit_b(1024), seed=1)
    ours = build_sam("vit_b").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@torch.no_grad()
def test_vit_b_1024_matches_reference(vit_b_pair):
    ref, ours = vit_b_pair
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))
    emb_ref = ref.image_encoder(x)
    emb_ours = ours.embed_images(x)
    assert emb_ours.shape == (1, 256, 64, 64)
    assert emb_ref.abs().mean() > 0.1  # random weights give a non-trivial embedding
    assert (emb_ours - emb_ref).abs().max() < TOL
    assert_decoder_parity(ref, ours, emb_ref, 1024)


@torch.no_grad()
def test_vit_b_256_matches_reference_with_interpolated_embeddings(vit_b_pair):
    """At 256 input our model keeps 1024-shaped parameters and interpolates; the reference gets them resized."""
    ref_1024, _ = vit_b_pair
    ours = build_sam("vit_b", image_size=256).eval()
    ours.load_state_dict(ref_1024.state_dict(), strict=True)
    ref = reference_vit_b(256)
    state = reference_state_at(ref_1024.state_dict(), 256)
    ref.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    emb_ref = ref.image_encoder(x)
    emb_ours = ours.embed_images(x)
    assert emb_ours.shape == (2, 256, 16, 16)
    assert (emb_ours - emb_ref).abs().max() < TOL
    assert_decoder_parity(ref, ours, emb_ref[:1], 256)


def test_state_dicts_load_strictly_both_ways(vit_b_pair):
    ref, ours = vit_b_pair
    fresh_ref = reference_vit_b(1024)
    fresh_ref.load_state_dict(ours.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape


def test_official_builders_match_parameter_counts():
    """Counts from methods.md §0.2 (built at 256 to keep it light; parameter shapes do not depend on input size)."""
    expected = {"vit_b": 93.74e6, "vit_l": 312.34e6, "vit_h": 641.09e6}
    for name, count in expected.items():
        with torch.device("meta"):
            n = sum(p.numel() for p in build_sam(name, image_size=256).parameters())
        assert abs(n - count) < 0.01e6, (name, n)


@torch.no_grad()
def test_vit_t_1024_matches_mobile_sam():
    """MobileSAM end to end (TinyViT encoder + SAM decoder) against the reference `mobile_sam` package."""
    mobile_sam = pytest.importorskip("mobile_sam")
    ref = randomize_(mobile_sam.sam_model_registry["vit_t"]().eval(), seed=7).eval()  # eval() re-caches biases
    ours = build_sam("vit_t").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(8))
    emb_ref = ref.image_encoder(x)
    emb_ours = ours.embed_images(x)
    assert emb_ref.abs().mean() > 0.1
    assert (emb_ours - emb_ref).abs().max() < TOL
    assert_decoder_parity(ref, ours, emb_ref, 1024)
    fresh = mobile_sam.sam_model_registry["vit_t"]()
    fresh.load_state_dict(ours.state_dict(), strict=True)
