"""Parity of promptsam's TinyViT (MobileSAM encoder) with the reference `mobile_sam` on random weights."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import randomize_
from promptsam.models.sam.tiny_vit import TinyViT, tiny_vit_5m

with warnings.catch_warnings():  # the reference registers timm models on import and warns
    warnings.simplefilter("ignore")
    mobile_sam_modeling = pytest.importorskip("mobile_sam.modeling")

pytestmark = pytest.mark.filterwarnings("ignore")

TOL = 1e-4


def reference(img_size: int) -> torch.nn.Module:
    """The reference MobileSAM TinyViT (build_sam_vit_t's arguments) for a square `img_size` input."""
    torch.manual_seed(0)
    return mobile_sam_modeling.TinyViT(
        img_size=img_size, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4., drop_rate=0., drop_path_rate=0.0,
        use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
    )


def randomized_reference(img_size: int, seed: int) -> torch.nn.Module:
    """Reference with every float parameter/buffer (BN stats, LN, neck, biases) randomised, then eval()."""
    ref = randomize_(reference(img_size), seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("attention_biases"):  # make the relative bias clearly matter
                p.copy_(torch.randn(p.shape, generator=gen))
    return ref.eval()  # the reference caches the gathered bias (`ab`) in eval(): call it after randomising


@torch.no_grad()
def reference_forward(ref: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference forward without its hard-coded 64x64 final grid (its own forward only works at 1024)."""
    y = ref.patch_embed(x)
    for layer in ref.layers:
        y = layer(y)
    side = x.shape[-1] // 16
    return ref.neck(y.view(x.shape[0], side, side, -1).permute(0, 3, 1, 2))


def ours_from(ref: torch.nn.Module) -> TinyViT:
    ours = tiny_vit_5m()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval()


@pytest.mark.parametrize("size", [1024, 256])
def test_parity_with_reference(size: int) -> None:
    ref = randomized_reference(size, seed=size)
    ours = ours_from(ref)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = ref(x) if size == 1024 else reference_forward(ref, x)
        got = ours(x)
    assert got.shape == expected.shape == (1, 256, size // 16, size // 16)
    assert (got - expected).abs().max() < TOL


def test_state_dict_loads_back_into_reference() -> None:
    ref = reference(1024)
    ours = tiny_vit_5m()
    theirs, mine = ref.state_dict(), ours.state_dict()
    assert list(mine) == list(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in theirs)
    ref.load_state_dict(mine, strict=True)
    assert "attention_bias_idxs" not in " ".join(mine)
    assert sum(1 for k in mine if k.endswith("attention_biases")) == 10


def test_any_multiple_of_64_without_rebuilding() -> None:
    ours = randomize_(tiny_vit_5m(), seed=3).eval()
    with torch.no_grad():
        assert ours(torch.randn(1, 3, 512, 512)).shape == (1, 256, 32, 32)
        assert ours(torch.randn(1, 3, 256, 384)).shape == (1, 256, 16, 24)
        assert ours(torch.randn(1, 3, 448, 448)).shape == (1, 256, 28, 28)  # no window padding


def test_train_mode_parity_and_backward() -> None:
    ref = randomized_reference(256, seed=11)
    ours = ours_from(ref)
    ref.train()
    ours.train()  # BatchNorm on batch statistics (unfolded ConvBN), bias mask with grad
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    expected = reference_forward(ref, x)
    got = ours(x)
    assert (got - expected).abs().max() < TOL
    got.square().mean().backward()
    assert all(p.grad is not None for n, p in ours.named_parameters() if not n.startswith(("head", "norm_head")))
