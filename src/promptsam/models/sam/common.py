"""Small layers shared by the SAM image encoders, prompt encoder and mask decoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

T = TypeVar("T")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, *spatial) tensor: 2D maps here, 3D volumes in SAM-Med3D."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        shape = (-1,) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)


class MLPBlock(nn.Module):
    """Two-layer MLP of a transformer block (keys lin1, lin2)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def sam_neck(in_chans: int, out_chans: int, *, conv: type[nn.Module] = nn.Conv2d) -> nn.Sequential:
    """SAM's encoder neck: 1x1 conv, LayerNorm, 3x3 conv, LayerNorm (keys neck.0..3); `conv=nn.Conv3d` in 3D."""
    return nn.Sequential(
        conv(in_chans, out_chans, kernel_size=1, bias=False),
        LayerNorm2d(out_chans),
        conv(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_chans),
    )


# oneDNN's fused conv / linear + elementwise kernels (those Inductor emits on CPU). They have no autograd, so they
# only replace the separate ops when no graph is recorded; elsewhere the same math runs as plain ops.
_ONEDNN = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)


def fusable(x: torch.Tensor) -> bool:
    """Whether oneDNN's fused kernels may replace plain ops for `x`: on CPU, with no autograd graph recorded, outside
    `torch.compile` (which fuses by itself)."""
    return _ONEDNN and x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def autocast_cast(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Tensors in the CPU autocast dtype when autocast is on (as F.conv2d and F.linear would cast them)."""
    if not torch.is_autocast_enabled("cpu"):
        return list(tensors)
    dtype = torch.get_autocast_dtype("cpu")
    return [None if t is None else t.to(dtype) for t in tensors]


def _pair(value: int | tuple) -> list[int]:
    return list(value) if isinstance(value, tuple | list) else [value, value]


def conv_gelu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int | tuple = 1, padding: int | tuple = 0,
    dilation: int | tuple = 1, groups: int = 1,
) -> torch.Tensor:
    """GELU(conv2d(x)), one oneDNN kernel when fusable."""
    if fusable(x):
        x, weight, bias = autocast_cast(x, weight, bias)
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, _pair(padding), _pair(stride),
                                                       _pair(dilation), groups, "gelu", [], "none")
    return F.gelu(F.conv2d(x, weight, bias, stride, padding, dilation, groups))


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of `conv` with the eval BatchNorm `bn` after it (affine, running statistics) folded in."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    return conv.weight * scale[:, None, None, None], shift * scale + bn.bias


class DerivedCache:
    """Tensors derived from parameters, kept between calls while no autograd graph is recorded and rebuilt as soon
    as a parameter is modified in place (version counter) or replaced (storage)."""

    def __init__(self) -> None:
        self.store: dict[object, object] = {}
        self.stamp: tuple = ()

    def get(self, params: tuple[torch.Tensor, ...], key: object, build: Callable[[], T]) -> T:
        """`build()`, cached under `key` for the current state of `params` (not cached when grad is recorded)."""
        if torch.compiler.is_compiling() or torch.is_grad_enabled() or any(p.is_inference() for p in params):
            return build()
        stamp = tuple((p._version, p.data_ptr(), p.device) for p in params)
        if stamp != self.stamp:
            self.store, self.stamp = {}, stamp
        if key not in self.store:
            self.store[key] = build()
        return self.store[key]  # type: ignore[return-value]
