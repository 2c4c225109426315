"""SAM encoder blocks (chunked attention and MLP; windows padded after qkv, real queries only) vs the reference."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_
from promptsam.models.sam import image_encoder
from promptsam.models.sam.image_encoder import Block

segment_anything = pytest.importorskip("segment_anything")
from segment_anything.modeling.image_encoder import Block as ReferenceBlock  # noqa: E402

TOL = 1e-4


def block_pair(window: int, grid: int) -> tuple[torch.nn.Module, Block]:
    """A small reference block (dim 64, 4 heads) and ours with the same random weights."""
    ref = ReferenceBlock(
        dim=64, num_heads=4, qkv_bias=True, use_rel_pos=True, window_size=window, input_size=(window or grid,) * 2
    )
    ref = randomize_(ref, seed=5).eval()
    ours = Block(dim=64, num_heads=4, mlp_ratio=4.0, window_size=window, rel_pos_size=window or grid).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize(("window", "grid"), [(0, 20), (7, 20), (7, 14), (7, 5)])
@torch.no_grad()
def test_chunked_block_matches_reference_and_whole(window, grid, monkeypatch):
    """Global and windowed blocks (grids padded to whole windows or not, smaller than one window), whole and in
    one-row chunks."""
    ref, ours = block_pair(window, grid)
    x = torch.randn(2, grid, grid, 64, generator=torch.Generator().manual_seed(6))
    expected = ref(x)
    monkeypatch.setattr(image_encoder, "CHUNK_BYTES", 2**40)  # one chunk: the plain computation
    whole = ours(x)
    monkeypatch.setattr(image_encoder, "CHUNK_BYTES", 1)  # one query row / MLP row per chunk
    chunked = ours(x)
    assert expected.abs().mean() > 0.1
    assert (whole - expected).abs().max() < TOL
    assert (chunked - whole).abs().max() < 1e-5


@pytest.mark.parametrize("window", [0, 7])
def test_chunked_block_gradients_match_whole(window, monkeypatch):
    """Training goes through the same chunks: gradients equal those of the plain computation."""
    _, ours = block_pair(window, 20)
    x = torch.randn(1, 20, 20, 64, generator=torch.Generator().manual_seed(7), requires_grad=True)
    grads = []
    for chunk_bytes in (2**40, 1):
        monkeypatch.setattr(image_encoder, "CHUNK_BYTES", chunk_bytes)
        ours.zero_grad()
        x.grad = None
        ours(x).square().mean().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in ours.parameters()])
    for whole, chunked in zip(*grads, strict=True):
        assert (whole - chunked).abs().max() <= 1e-5 * (1 + whole.abs().max())
