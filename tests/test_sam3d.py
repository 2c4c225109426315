"""Parity of promptsam's SAM-Med3D against the reference `medim` package on the same random weights.

medim is only read here (built without weights, so nothing touches the network); every parameter and buffer is
randomised, including the relative-position tables and the Fourier matrix, so a wrong axis order fails.
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import randomize_
from promptsam.errors import CheckpointError
from promptsam.models import build_sam3d, load_checkpoint
from promptsam.models.registry import find_checkpoint, get_entry
from promptsam.models.sam3d.image_encoder import ImageEncoderViT3D

os.environ.setdefault("HF_HUB_OFFLINE", "1")
medim_sam = pytest.importorskip("medim.models.sam_med3d")

TOL = 1e-4


def reference_sam_med3d() -> torch.nn.Module:
    """medim's SAM-Med3D (`vit_b_ori`, 128³) with random weights and a unit-scale random Fourier matrix."""
    ref = randomize_(medim_sam.build_sam3D_vit_b_ori(pretrained=False).eval(), seed=1)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        ref.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.normal_(generator=gen)
    return ref


def clicks(b: int, p: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "coords": torch.randint(0, 128, (b, p, 3), generator=gen).float(),
        "labels": torch.randint(0, 2, (b, p), generator=gen),
        "masks": torch.randn(b, 1, 32, 32, 32, generator=gen),
    }


@pytest.fixture(scope="module")
def pair():
    ref = reference_sam_med3d()
    ours = build_sam3d("sam_med3d").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.slow  # the reference encoder alone takes ~20 s on one thread
@torch.no_grad()
def test_sam_med3d_128_matches_reference(pair):
    """Volume embedding, then low-res logits and IoU for point and mask prompts, single and multimask."""
    ref, ours = pair
    x = torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(3))
    emb_ref = ref.image_encoder(x)
    emb_ours = ours.embed_volumes(x)
    assert emb_ours.shape == (1, 384, 8, 8, 8)
    assert emb_ref.abs().mean() > 0.1  # random weights give a non-trivial embedding
    assert (emb_ours - emb_ref).abs().max() < TOL

    c = clicks(3, 2)
    emb = emb_ref.expand(3, -1, -1, -1, -1)
    for masks in (c["masks"], None):
        for multimask in (False, True):
            sparse, dense = ref.prompt_encoder(points=(c["coords"], c["labels"]), boxes=None, masks=masks)
            logits_ref, iou_ref = ref.mask_decoder(emb, ref.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
            logits, iou = ours.decode(
                emb_ref, points=(c["coords"], c["labels"]), mask_inputs=masks, multimask_output=multimask
            )
            m = 3 if multimask else 1
            assert logits.shape == logits_ref.shape == (3, m, 32, 32, 32)
            assert logits_ref.abs().mean() > 0.1
            assert (logits - logits_ref).abs().max() < TOL
            assert (iou - iou_ref).abs().max() < TOL


@torch.no_grad()
def test_dense_pe_swaps_the_first_two_axes_against_points(pair):
    """The official quirk: the dense PE at grid voxel (a, b, c) is the point PE of (b, a, c) (methods.md §2)."""
    ref, ours = pair
    assert torch.equal(ours.prompt_encoder.get_dense_pe(), ref.prompt_encoder.get_dense_pe())
    dense = ours.prompt_encoder.get_dense_pe()[0]
    pe = ours.prompt_encoder.pe_layer
    for a, b, c in [(0, 5, 2), (7, 1, 3), (2, 6, 6)]:
        swapped = pe.forward_with_coords(torch.tensor([16.0 * b + 8, 16.0 * a + 8, 16.0 * c + 8]), (128,) * 3)
        straight = pe.forward_with_coords(torch.tensor([16.0 * a + 8, 16.0 * b + 8, 16.0 * c + 8]), (128,) * 3)
        assert torch.allclose(dense[:, a, b, c], swapped, atol=1e-5)
        assert not torch.allclose(dense[:, a, b, c], straight, atol=1e-3)


def test_wrong_volume_shape_fails_with_one_line(pair):
    _, ours = pair
    with pytest.raises(ValueError, match=r"shape \(B, 1, 128, 128, 128\), got \(1, 1, 64, 64, 64\)"):
        ours.embed_volumes(torch.zeros(1, 1, 64, 64, 64))


@pytest.mark.parametrize("window", [4, 7])
def test_small_encoder_matches_reference_in_several_windows_and_one(window):
    """A small 3D ViT (6³ tokens): window 4 pads to 8³ and splits 8 windows, window 7 is one padded window.

    Gradients too, since M-SAM trains LoRA through the relative-position term.
    """
    config = {"img_size": 96, "patch_size": 16, "in_chans": 1, "embed_dim": 96, "depth": 3, "num_heads": 3}
    ref = medim_sam.ImageEncoderViT3D(
        **config,
        out_chans=48,
        norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
        use_rel_pos=True,
        window_size=window,
        global_attn_indexes=(1,),
    )
    randomize_(ref, seed=4)
    ours = ImageEncoderViT3D(**config, out_chans=48, window_size=window, global_attn_indexes=(1,))
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 1, 96, 96, 96, generator=torch.Generator().manual_seed(5))
    out_ref, out = ref(x), ours(x)
    assert out.shape == (2, 48, 6, 6, 6)
    assert (out - out_ref).abs().max() < TOL
    out_ref.square().mean().backward()
    out.square().mean().backward()
    for name in ("blocks.0.attn.rel_pos_h", "blocks.1.attn.rel_pos_w", "blocks.2.attn.qkv.weight"):
        grad_ref = ref.get_parameter(name).grad
        grad = ours.get_parameter(name).grad
        assert grad_ref.abs().max() > 0
        assert (grad - grad_ref).abs().max() < 1e-5 * max(1.0, grad_ref.abs().max().item()), name


def test_parameter_counts():
    """methods.md §2: 100.51 M in all, encoder 92.92 M, prompt encoder 9,052 (8,668 + the 384-entry Fourier buffer)."""
    with torch.device("meta"):
        ours = build_sam3d("sam_med3d")
        ref = medim_sam.build_sam3D_vit_b_ori()

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(ours) == count(ref) == 100_509_232
    assert count(ours.image_encoder) == 92_924_928
    assert count(ours.prompt_encoder) == 8_668
    assert sum(t.numel() for t in ours.prompt_encoder.state_dict().values()) == 9_052
    assert count(ours.mask_decoder) == 7_575_636


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, pair):
    """The reference's weights saved the way the official checkpoint stores them."""
    ref, _ = pair
    path = tmp_path_factory.mktemp("ckpt") / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": ref.state_dict(), "epoch": 7, "optimizer_state_dict": {}}, path)
    return path


def test_official_checkpoint_loads_strictly_both_ways(pair, official_file, monkeypatch):
    ref, _ = pair
    for name in ("sam_med3d", "vit_b_ori"):
        model = build_sam3d(name, checkpoint=official_file)
        assert model.arch_name == name
        for key, value in ref.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
    fresh_ref = medim_sam.build_sam3D_vit_b_ori()
    fresh_ref.load_state_dict(model.state_dict(), strict=True)
    monkeypatch.setenv("PROMPTSAM_CHECKPOINTS", str(official_file.parent))
    assert find_checkpoint("sam_med3d") == official_file
    assert get_entry("vit_b_ori").checkpoint_file == "sam_med3d_turbo.pth"
    assert torch.equal(
        build_sam3d(pretrained=True).state_dict()["image_encoder.pos_embed"],
        ref.state_dict()["image_encoder.pos_embed"],
    )


def assert_one_line_error(call, *fragments):
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_renamed_or_wrong_keys_fail_with_one_line(official_file, tmp_path):
    state = torch.load(official_file, weights_only=True)["model_state_dict"]
    state = {k: v.half() for k, v in state.items()}  # keys and shapes are what matter; half keeps the files small
    renamed = dict(state)
    renamed["image_encoder.blocks.3.attn.rel_pos_dd"] = renamed.pop("image_encoder.blocks.3.attn.rel_pos_d")
    bad = tmp_path / "renamed.pth"
    torch.save({"model_state_dict": renamed}, bad)
    model = build_sam3d("sam_med3d")
    before = model.state_dict()["mask_decoder.iou_token.weight"].clone()
    assert_one_line_error(
        lambda: load_checkpoint(model, bad),
        str(bad),
        "does not fit sam_med3d",
        "missing keys: image_encoder.blocks.3.attn.rel_pos_d",
        "unexpected keys: image_encoder.blocks.3.attn.rel_pos_dd",
    )
    assert torch.equal(model.state_dict()["mask_decoder.iou_token.weight"], before)  # nothing half-loaded

    wrong = dict(state)
    wrong["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 128)  # a 2D SAM's
    bad = tmp_path / "wrong_shape.pth"
    torch.save(wrong, bad)
    assert_one_line_error(
        lambda: build_sam3d("sam_med3d", checkpoint=bad),
        str(bad),
        "shape mismatch: prompt_encoder.pe_layer.positional_encoding_gaussian_matrix (2, 128) vs model (3, 128)",
    )
    assert_one_line_error(lambda: build_sam3d("vit_b"), "'vit_b' is not a 3D model")
