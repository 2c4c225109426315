"""SAM ViT's bf16 CPU attention (bf16 q·k and p·v matmuls, fp32 bias and softmax) against plain fp32 attention.

Tolerance: the reference is computed in fp32 from the same bf16-rounded inputs, so only the computation's own rounding
is measured. It is dominated by the bf16 rounding of scale q·k (relative 2^-9 of logits up to ~12 here, i.e. up to ~2 %
on a probability), then of the probabilities and outputs: on outputs of std ~0.8 (|max| ~4) the max abs error is
0.02-0.04 and the mean 0.002. TOL_MAX = 0.08 and TOL_MEAN = 0.005 leave 2x margin; the previous bf16 path (SDPA with a
bf16 bias) is at 0.13-0.22 max on the same data and must stay worse.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptsam.models.sam import image_encoder
from promptsam.models.sam.image_encoder import Attention, bf16_attention, rel_pos_table

TOL_MAX = 0.08
TOL_MEAN = 0.005


def attention_inputs(
    batch: int, grid: tuple[int, int], q_size: tuple[int, int], c: int, seed: int
) -> tuple[torch.Tensor, ...]:
    """bf16 queries (logit std ~3), keys and values, and random fp32 relative-position tables."""
    gen = torch.Generator().manual_seed(seed)
    (h, w), (qh, qw) = grid, q_size
    q = (3 * torch.randn(batch, qh * qw, c, generator=gen)).bfloat16()
    k = torch.randn(batch, h * w, c, generator=gen).bfloat16()
    v = torch.randn(batch, h * w, c, generator=gen).bfloat16()
    r_h = rel_pos_table(0.3 * torch.randn(2 * h - 1, c, generator=gen), h)[:qh]
    r_w = rel_pos_table(0.3 * torch.randn(2 * w - 1, c, generator=gen), w)[:qw]
    return q, k, v, r_h, r_w


def plain_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_h: torch.Tensor, r_w: torch.Tensor, scale: float
) -> torch.Tensor:
    """fp32 softmax(scale q·k + q·R_h + q·R_w) v with the whole decomposed bias materialised."""
    q, k, v, r_h, r_w = (t.float() for t in (q, k, v, r_h, r_w))
    b, lq, c = q.shape
    (qh, h), (qw, w) = r_h.shape[:2], r_w.shape[:2]
    r_q = q.view(b, qh, qw, c)
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, r_h)[..., :, None]
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, r_w)[..., None, :]
    bias = (bias_h + bias_w).reshape(b, lq, h * w)
    return torch.softmax(scale * q @ k.transpose(1, 2) + bias, dim=-1) @ v


def sdpa_bf16_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_h: torch.Tensor, r_w: torch.Tensor, scale: float
) -> torch.Tensor:
    """The previous bf16 computation: SDPA with the bias computed and added in bf16."""
    mask = image_encoder.decomposed_rel_pos_bias(q[:, None], r_h.bfloat16(), r_w.bfloat16())
    return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=mask, scale=scale)[:, 0]


@pytest.mark.parametrize(
    ("batch", "grid", "q_size"),
    [(2, (32, 32), (32, 32)), (3, (14, 14), (9, 14)), (2, (12, 20), (12, 20))],
    ids=["global-32x32-2heads", "window-9x14-queries", "non-square"],
)
@torch.no_grad()
def test_bf16_attention_matches_fp32(batch, grid, q_size, monkeypatch):
    """Whole and in one-query-row tiles, within TOL_MAX / TOL_MEAN of fp32, more accurate than the previous path."""
    q, k, v, r_h, r_w = attention_inputs(batch, grid, q_size, 64, seed=sum(grid))
    scale = 64**-0.5
    expected = plain_attention(q, k, v, r_h, r_w, scale)
    out = bf16_attention(q, k, v, r_h, r_w, scale)
    monkeypatch.setattr(image_encoder, "BF16_TILE_BYTES", 1)  # one head and one query row per score tile
    tiled = bf16_attention(q, k, v, r_h, r_w, scale)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert expected.std() > 0.3
    err = (out.float() - expected).abs()
    assert err.max() < TOL_MAX and err.mean() < TOL_MEAN
    assert (tiled.float() - out.float()).abs().max() <= 1e-2
    assert err.max() < (sdpa_bf16_attention(q, k, v, r_h, r_w, scale).float() - expected).abs().max()


def random_attention(rel_pos_size: int) -> Attention:
    """A small attention layer (dim 64, 2 heads) with random weights and relative-position tables."""
    attn = Attention(64, 2, rel_pos_size=rel_pos_size).eval()
    gen = torch.Generator().manual_seed(rel_pos_size)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim == 2 and p.shape[0] < 64 else 0.2))
    return attn


@pytest.mark.parametrize(("window", "grid"), [(0, 20), (7, 20)])
def test_autocast_attention_uses_bf16_path(window, grid, monkeypatch):
    """Under CPU bf16 autocast the layer uses `bf16_attention` (no SDPA): close to fp32, gradients flow."""
    attn = random_attention(window or grid)
    x = torch.randn(1, grid, grid, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = attn(x, window=window)

    def no_sdpa(*args, **kwargs):
        raise AssertionError("SDPA called on the bf16 CPU path")

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_sdpa)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, window=window)
    assert out.dtype == torch.bfloat16
    assert expected.abs().mean() > 0.1
    # the qkv and proj layers run in bf16 too: a relative tolerance of a few bf16 steps
    assert (out.float() - expected).abs().max() < 0.05 * expected.abs().max()
    out.float().square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    assert attn.rel_pos_h.grad is not None and attn.rel_pos_h.grad.abs().max() > 0
