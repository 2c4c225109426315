"""TinyViT's fast paths against plain computations: window attention on real tokens plus one collapsed padding key
(vs zero-padded windows), oneDNN-fused inference ops and no-grad caches (vs plain ops), in eval and train mode."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_
from promptsam.models.sam.tiny_vit import Attention, TinyViT, tiny_vit_5m, window_bias_index

pytestmark = pytest.mark.filterwarnings("ignore")

TOL = 1e-4


def padded_attention(attn: Attention, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The reference's window attention written out: zero-pad (B, H, W, C) to whole windows, LayerNorm and attend
    over all ws^2 tokens of every window with the gathered relative bias (explicit softmax), crop the padding."""
    b, h, w, c = x.shape
    ws, heads = attn.window_size, attn.num_heads
    d = c // heads
    nh, nw = -(-h // ws), -(-w // ws)
    y = F.pad(x, (0, 0, 0, nw * ws - w, 0, nh * ws - h))
    y = y.view(b, nh, ws, nw, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
    q, k, v = attn.qkv(attn.norm(y)).view(-1, ws * ws, heads, 3 * d).transpose(1, 2).chunk(3, dim=-1)
    yy, xx = (t.flatten() for t in torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    index = (yy[:, None] - yy[None, :]).abs() * ws + (xx[:, None] - xx[None, :]).abs()
    scores = q @ k.transpose(-2, -1) * d**-0.5 + attn.attention_biases[:, index]
    y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, ws * ws, c)
    y = attn.proj(y).view(b, nh, nw, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * ws, nw * ws, c)
    y = y[:, :h, :w]
    return y if residual is None else residual + y


def random_attention(dim: int, heads: int, window: int, seed: int) -> Attention:
    """An Attention with every parameter random and clearly non-zero (LayerNorm affine, biases, bias table)."""
    attn = Attention(dim, heads, window)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim == 2 and p.shape[0] != heads else 1.0))
    return attn


def random_model(seed: int) -> TinyViT:
    """tiny_vit_5m with randomised parameters and BN statistics and N(0, 1) relative-bias tables."""
    model = randomize_(tiny_vit_5m(), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.copy_(torch.randn(p.shape, generator=gen))
    return model


GRIDS = [  # (H, W, window): padded on both axes, one axis, non-square, smaller than a window, no padding
    (16, 16, 14),
    (20, 16, 14),
    (32, 32, 7),
    (16, 23, 7),
    (5, 3, 7),
    (14, 28, 14),
]


@pytest.mark.parametrize(("h", "w", "window"), GRIDS)
def test_attention_matches_padded_windows_eval(h: int, w: int, window: int) -> None:
    attn = random_attention(64, 2, window, seed=h * w).eval()
    x = torch.randn(2, h, w, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = padded_attention(attn, x, residual=x)
        for _ in range(2):  # the second call uses the cached masks
            assert (attn(x, residual=x) - expected).abs().max() < TOL
        assert (attn(x) - (expected - x)).abs().max() < TOL


@pytest.mark.parametrize(("h", "w", "window"), GRIDS)
def test_attention_matches_padded_windows_train(h: int, w: int, window: int) -> None:
    attn = random_attention(64, 2, window, seed=h + w).train()
    x = torch.randn(2, h, w, 64, generator=torch.Generator().manual_seed(2))
    weight = torch.randn(2, h, w, 64, generator=torch.Generator().manual_seed(3))
    outs, grads = [], []
    for fn in (attn, lambda t: padded_attention(attn, t)):
        attn.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        (out * weight).sum().backward()
        outs.append(out.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in attn.parameters()])
    assert (outs[0] - outs[1]).abs().max() < TOL
    for got, expected in zip(*grads, strict=True):  # input, LayerNorm, qkv, proj and bias-table gradients
        assert (got - expected).abs().max() < TOL * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("size", [(256, 256), (320, 256)])
def test_model_matches_padded_windows(size: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole encoder, eval (fused ops, caches) and train (BN batch statistics, gradients of every bias table)."""
    model = random_model(seed=size[0])
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(4))
    weight = torch.randn(1, 256, size[0] // 16, size[1] // 16, generator=torch.Generator().manual_seed(5))
    results = {}
    for name in ("ours", "padded"):
        with monkeypatch.context() as patch:
            if name == "padded":
                patch.setattr(Attention, "forward", padded_attention)
            with torch.no_grad():
                got = model.eval()(x)
            model.train().zero_grad()
            out = model(x)
            (out * weight).sum().backward()
        biases = [p.grad.clone() for n, p in model.named_parameters() if n.endswith("attention_biases")]
        results[name] = got, out.detach(), biases
    (eval_ours, train_ours, grads_ours), (eval_ref, train_ref, grads_ref) = results["ours"], results["padded"]
    assert (eval_ours - eval_ref).abs().max() < TOL
    assert (train_ours - train_ref).abs().max() < TOL
    assert len(grads_ours) == 10
    for got, expected in zip(grads_ours, grads_ref, strict=True):
        assert expected.abs().max() > 0
        assert (got - expected).abs().max() < TOL * max(1.0, expected.abs().max().item())


def test_bias_gradients_match_mobile_sam_in_train_mode() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modeling = pytest.importorskip("mobile_sam.modeling")
    torch.manual_seed(0)
    ref = modeling.TinyViT(
        img_size=256, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
        use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
    )
    ours = random_model(seed=21).train()
    ref.load_state_dict(ours.state_dict(), strict=True)
    ref.train()
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(6))
    weight = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(7))
    y = ref.patch_embed(x)
    for layer in ref.layers:
        y = layer(y)
    expected = ref.neck(y.view(1, 16, 16, -1).permute(0, 3, 1, 2))
    got = ours(x)
    assert (got - expected).abs().max() < TOL
    (expected * weight).sum().backward()
    (got * weight).sum().backward()
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if name.endswith("attention_biases"):
            g = theirs[name].grad
            assert (p.grad - g).abs().max() < TOL * max(1.0, g.abs().max().item())


def test_fused_inference_matches_plain_ops() -> None:
    """No-grad inference (oneDNN-fused conv/linear + GELU/residual, cached folds and masks) vs the plain ops that
    run whenever autograd records, on the same eval model; bf16 autocast runs both ways too."""
    model = random_model(seed=8).eval()
    x = torch.randn(2, 3, 192, 320, generator=torch.Generator().manual_seed(9))  # batch 2: strided row bands
    with torch.no_grad():
        fast = model(x)
        again = model(x)  # caches warm
    with torch.enable_grad():
        plain = model(x).detach()
    assert torch.equal(fast, again)
    assert (fast - plain).abs().max() < TOL
    with torch.autocast("cpu", torch.bfloat16):
        with torch.no_grad():
            fast16 = model(x).float()
        plain16 = model(x).detach().float()
    scale = plain.abs().max()
    assert (fast16 - plain).abs().max() < 0.1 * scale
    assert (plain16 - plain).abs().max() < 0.1 * scale


def test_caches_follow_in_place_parameter_changes() -> None:
    model = random_model(seed=10).eval()
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        before = model(x)
        model.layers[2].blocks[0].attn.attention_biases.mul_(-2.0)  # masks
        model.layers[0].blocks[0].conv1.bn.running_var.mul_(3.0)  # folded ConvBN
        model.neck[2].weight.mul_(0.5)  # channels-last neck weight
        after = model(x)
    with torch.enable_grad():
        fresh = model(x).detach()  # no cache is used while grad is recorded
    assert (after - fresh).abs().max() < TOL
    assert (after - before).abs().max() > 1e-2


def test_train_mode_without_grad_uses_batch_statistics_of_whole_maps() -> None:
    """No-grad train mode (e.g. a validation pass left in train()) must not band the MBConvs: BN needs whole maps."""
    model = random_model(seed=12).train()
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(13))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        fast = model(x)
    model.load_state_dict(state)  # undo the running-statistics update
    plain = model(x).detach()
    assert (fast - plain).abs().max() < TOL


def test_training_after_inference_mode() -> None:
    """Index tables first built under inference_mode are cached for later training steps, which save them."""
    window_bias_index.cache_clear()
    model = random_model(seed=14)
    x = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(15))
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).square().mean().backward()
    model.eval()(x).square().mean().backward()  # eval with grad: masks rebuilt, not taken from the cache
    assert all(p.grad is not None for n, p in model.named_parameters() if n.endswith("attention_biases"))


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups"), [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1),
                                                                     (1, (1, 0), 1, 4), (1, 0, 1, 1)])
def test_conv_gelu_fused_equals_plain_ops(stride, padding, dilation, groups) -> None:
    """The one oneDNN kernel (no grad recorded) computes GELU(conv2d) as plain ops do, in fp32 and under autocast."""
    from promptsam.models.sam.common import conv_gelu

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 17, 19, generator=g)
    k = 3 if padding else 1
    weight, bias = torch.randn(16, 8 // groups, k, k, generator=g) * 0.2, torch.randn(16, generator=g)
    plain = F.gelu(F.conv2d(x, weight, bias, stride, padding, dilation, groups))
    with torch.no_grad():
        fused = conv_gelu(x, weight, bias, stride, padding, dilation, groups)
        with torch.autocast("cpu", torch.bfloat16):
            fused16 = conv_gelu(x, weight, bias, stride, padding, dilation, groups)
    assert fused.shape == plain.shape
    assert (fused - plain).abs().max() < TOL
    assert fused16.dtype == torch.bfloat16
    assert (fused16.float() - plain).abs().max() < 0.05 * plain.abs().max()
