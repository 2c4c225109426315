"""The mask decoder's fast paths (shared first block, folded cross-attention projections, chunking, only the needed
mask tokens, fused upscaling) equal the reference `segment-anything` decoder on the same random weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_
from promptsam.models.sam.mask_decoder import MaskDecoder, _linear_gelu
from promptsam.models.sam.prompt_encoder import PromptEncoder
from promptsam.models.sam.transformer import Attention

segment_anything = pytest.importorskip("segment_anything")
from segment_anything.modeling import MaskDecoder as RefDecoder  # noqa: E402
from segment_anything.modeling import TwoWayTransformer as RefTransformer  # noqa: E402

SIZE, GRID, C = 256, 16, 256
TOL = 1e-4


class _AddDetails(torch.nn.Module):
    """Adds channels-last detail maps to the reference's upscaled embedding (B, C/8, 4h, 4w)."""

    def __init__(self, details: torch.Tensor) -> None:
        super().__init__()
        self.details = details

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.details.permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def models() -> tuple[PromptEncoder, MaskDecoder, RefDecoder]:
    prompt = randomize_(PromptEncoder(image_embedding_size=(GRID, GRID), input_image_size=(SIZE, SIZE)), seed=3)
    ours = randomize_(MaskDecoder(transformer_dim=C), seed=4).eval()
    ref = RefDecoder(
        transformer_dim=C,
        transformer=RefTransformer(depth=2, embedding_dim=C, mlp_dim=2048, num_heads=8),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    ).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return prompt.eval(), ours, ref


def prompts(prompt: PromptEncoder, n: int, kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse and dense embeddings of n prompts: one point (7 tokens), points + box + mask (10 tokens, dense per
    prompt) or many points (19 tokens: more than the folded attention takes, so the projected path runs)."""
    gen = torch.Generator().manual_seed(seed)
    count = {"point": 1, "mixed": 3, "many": 14}[kind]
    points = torch.rand(n, count, 2, generator=gen) * SIZE
    labels = torch.randint(0, 2, (n, count), generator=gen)
    boxes = masks = None
    if kind != "point":
        boxes = torch.rand(n, 4, generator=gen) * SIZE / 2
        boxes[:, 2:] += boxes[:, :2]
    if kind == "mixed":
        masks = torch.randn(n, 1, 4 * GRID, 4 * GRID, generator=gen)
    with torch.no_grad():
        return prompt(points=(points, labels), boxes=boxes, masks=masks)


def reference(
    ref: RefDecoder,
    images: torch.Tensor,
    pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    multimask: bool,
    index: torch.Tensor | None = None,
    details: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference decoder, one call per image for the prompts reading it (it takes one image per call)."""
    index = torch.zeros(sparse.shape[0], dtype=torch.long) if index is None else index
    masks, iou = [None] * sparse.shape[0], [None] * sparse.shape[0]
    upscaling = ref.output_upscaling
    for b in index.unique().tolist():
        rows = (index == b).nonzero()[:, 0]
        if details is not None:
            ref.output_upscaling = torch.nn.Sequential(upscaling, _AddDetails(details[b : b + 1]))
        m, i = ref(images[b : b + 1], pe, sparse[rows], dense[rows], multimask)
        ref.output_upscaling = upscaling
        for j, row in enumerate(rows.tolist()):
            masks[row], iou[row] = m[j], i[j]
    return torch.stack(masks), torch.stack(iou)


def assert_close(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        assert (x - y).abs().max() < TOL


@pytest.mark.parametrize("n", [1, 5, 64])
@pytest.mark.parametrize("kind", ["point", "mixed", "many"])
@torch.no_grad()
def test_one_image_matches_reference(models, n, kind):
    prompt, ours, ref = models
    images = torch.randn(1, C, GRID, GRID, generator=torch.Generator().manual_seed(n))
    pe = prompt.get_dense_pe()
    sparse, dense = prompts(prompt, n, kind)
    for multimask in (False, True):
        got = ours(images, pe, sparse, dense, multimask)
        assert got[0].shape == (n, 3 if multimask else 1, 4 * GRID, 4 * GRID)
        assert_close(got, reference(ref, images, pe, sparse, dense, multimask))


@pytest.mark.parametrize("n", [1, 5, 64])
@torch.no_grad()
def test_image_index_and_details_match_reference(models, n):
    prompt, ours, ref = models
    gen = torch.Generator().manual_seed(7)
    images = torch.randn(3, C, GRID, GRID, generator=gen)
    details = torch.randn(3, 4 * GRID, 4 * GRID, C // 8, generator=gen)
    index = torch.randint(0, 3, (n,), generator=gen)
    pe = prompt.get_dense_pe()
    sparse, dense = prompts(prompt, n, "point", seed=n)
    for multimask in (False, True):
        for det in (None, details):
            got = ours(images, pe, sparse, dense, multimask, image_index=index, image_details=det)
            assert_close(got, reference(ref, images, pe, sparse, dense, multimask, index, det))
    # one image with details, and small chunks (chunk boundaries inside a batch)
    ours.chunk_tokens = 2 * GRID * GRID
    try:
        got = ours(images[:1], pe, sparse, dense, False, image_details=details[:1])
    finally:
        del ours.chunk_tokens
    assert_close(got, reference(ref, images[:1], pe, sparse, dense, False, details=details[:1]))


@pytest.mark.parametrize("shared", [True, False])
def test_gradients_match_reference(models, shared):
    """Training decodes through the fast paths: gradients of weights and inputs equal the reference's."""
    prompt, ours, ref = models
    gen = torch.Generator().manual_seed(11)
    n = 5
    images = torch.randn(1 if shared else 2, C, GRID, GRID, generator=gen)
    details = torch.randn(images.shape[0], 4 * GRID, 4 * GRID, C // 8, generator=gen)
    index = None if shared else torch.tensor([1, 0, 1, 1, 0])
    pe = prompt.get_dense_pe()
    sparse, dense = prompts(prompt, n, "point", seed=2)
    w_mask = torch.randn(n, 1, 4 * GRID, 4 * GRID, generator=gen)
    w_iou = torch.randn(n, 1, generator=gen)
    grads = []
    for model, run in ((ours, ours), (ref, None)):
        model.train()
        model.zero_grad()
        inputs = [t.clone().requires_grad_(True) for t in (images, details, sparse)]
        if run is not None:
            masks, iou = ours(inputs[0], pe, inputs[2], dense, False, image_index=index, image_details=inputs[1])
        else:
            masks, iou = reference(ref, inputs[0], pe, inputs[2], dense, False, index, inputs[1])
        ((masks * w_mask).sum() + (iou * w_iou).sum()).backward()
        named = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        grads.append((named, [t.grad for t in inputs]))
        model.eval()
    (ours_params, ours_inputs), (ref_params, ref_inputs) = grads
    used = {k for k in ref_params if not k.startswith("output_hypernetworks_mlps.") or k.split(".")[1] == "0"}
    assert set(ours_params) == used
    # gradients sum over every prompt and pixel in another order than the reference: fp32 rounding reaches ~2e-4
    # of the largest entry on some CPUs (a wrong gradient is off by far more)
    grad_tol = 1e-3
    for key in used:
        scale = ref_params[key].abs().max().clamp(min=1.0)
        assert (ours_params[key] - ref_params[key]).abs().max() < grad_tol * scale, key
    for a, b in zip(ours_inputs, ref_inputs, strict=True):
        assert (a - b).abs().max() < grad_tol * b.abs().max().clamp(min=1.0)


@torch.inference_mode()
def test_bf16_autocast_stays_close_to_fp32(models):
    """The bf16 fast paths (fused oneDNN upscaling, bf16 image tokens) are as accurate as bf16 allows."""
    prompt, ours, ref = models
    images = torch.randn(1, C, GRID, GRID, generator=torch.Generator().manual_seed(5))
    pe = prompt.get_dense_pe()
    sparse, dense = prompts(prompt, 20, "point")
    masks, iou = reference(ref, images, pe, sparse, dense, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_masks, got_iou = ours(images, pe, sparse, dense, False)
        ref_masks, ref_iou = reference(ref, images, pe, sparse, dense, False)
    ours_err = (got_masks.float() - masks).abs().mean()
    ref_err = (ref_masks.float() - masks).abs().mean()
    assert ours_err < 2 * ref_err + 1e-3
    assert (got_iou.float() - iou).abs().max() < 0.05 * iou.abs().max().clamp(min=1.0)


@torch.no_grad()
def test_fused_linear_gelu_and_folded_attention_equal_plain_ops():
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(3, 40, 64, generator=gen), torch.randn(128, 64, generator=gen),
               torch.randn(128, generator=gen))
    assert (_linear_gelu(x, w, b, "none") - F.gelu(F.linear(x, w, b))).abs().max() < 1e-5
    attn = randomize_(Attention(C, 8, 2), seed=1)
    tokens, image = torch.randn(4, 7, C, generator=gen), torch.randn(4, 50, C, generator=gen)
    keys = image + torch.randn(1, 50, C, generator=gen)
    assert (attn.to_image(tokens, keys, image) - attn(tokens, keys, image)).abs().max() < TOL
    assert (attn.from_image(keys, tokens + 1, tokens, image) - image - attn(keys, tokens + 1, tokens)).abs().max() < TOL
    # shared image (batch 1) broadcast over the prompts
    one, one_keys = image[:1], keys[:1]
    assert (attn.to_image(tokens, one_keys, one) - attn(tokens, one_keys, one)).abs().max() < TOL
    assert (attn.from_image(one_keys, tokens, tokens, one) - one - attn(one_keys, tokens, tokens)).abs().max() < TOL
