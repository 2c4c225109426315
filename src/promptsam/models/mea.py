"""M-SAM's Mask-Enhanced Adapter (MEA): fuses the volume embedding E_I and the mask-prompt embedding E_M (§5.2).

The adapter replaces the decoder's `src = E_I + E_M` by `src = MEA(E_I, E_M)`, both (B, 384, 8, 8, 8). Everything
follows the official `mea.py` (nanase1025/M-SAM, `BiDirectionalAttentionNetwork` with one block), including:

- state-dict keys: the official attribute names are kept (typos aside there are none), so the `bidatt.*` part of an
  official M-SAM checkpoint loads strictly into this module once the prefix is stripped;
- `add_norm4`, a LayerNorm the official module defines but never uses: kept so keys and the parameter count
  (17,145,024) match the official module;
- the self-attention blocks' relative-position term, which is SAM-Med3D's (`official_rel_pos_bias_3d`, with its axis
  quirk), on zero-initialised (15, 64) tables for the 8³ grid.

Our choices: `depth` (the official N, fixed to 1 in M-SAM's training script) and `channels`/`grid`/`num_heads` are
arguments instead of constants; nothing else differs.
"""

from __future__ import annotations

import torch
from torch import nn

from promptsam.models.sam.common import MLPBlock
from promptsam.models.sam3d.common import LayerNorm3d
from promptsam.models.sam3d.image_encoder import Attention3D


def _last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 4, 1)


def _first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 4, 1, 2, 3)


class AdapterSelfAttention(Attention3D):
    """The MEA's SA block on (B, C, D, H, W): h = Attn(LN(z)) + z, then MLP(LN(h)), with no residual after the MLP."""

    def __init__(self, dim: int = 384, num_heads: int = 6, grid: int = 8) -> None:
        super().__init__(dim, num_heads, rel_pos_size=grid)
        self.norm1 = LayerNorm3d(dim)
        self.norm2 = LayerNorm3d(dim)
        self.mlp = MLPBlock(dim, 4 * dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = _last(self.norm1(z))
        x = self.proj(self.attend(self.qkv(x), tuple(x.shape[1:4]))) + _last(z)
        return _first(self.mlp(_last(self.norm2(_first(x)))))


class BidirectionalBlock(nn.Module):
    """One bidirectional block: a conv branch per input, then self-attention on mutually mixed inputs and MLPs.

    With I, P the (pre-normalised) image and prompt embeddings:
    I' = LN(I + Conv1(GELU(LN(Conv3(I))))), P' likewise; I'' = LN(SA(I' + I + P) + I'), I''' = LN(MLP(I'') + I'');
    P'' = LN(SA(I + P' + P) + P'), P''' = LN(MLP(P'') + P''). Returns (I''', P''').
    """

    def __init__(self, channels: int = 384, num_heads: int = 6, grid: int = 8) -> None:
        super().__init__()
        self.prompt_conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.prompt_conv2 = nn.Conv3d(channels, channels, kernel_size=1)
        self.image_conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.image_conv2 = nn.Conv3d(channels, channels, kernel_size=1)
        self.prompt_norm = LayerNorm3d(channels)
        self.image_norm = LayerNorm3d(channels)
        self.prompt_addnorm1 = LayerNorm3d(channels)
        self.prompt_addnorm2 = LayerNorm3d(channels)
        self.prompt_addnorm3 = LayerNorm3d(channels)
        self.image_addnorm1 = LayerNorm3d(channels)
        self.image_addnorm2 = LayerNorm3d(channels)
        self.image_addnorm3 = LayerNorm3d(channels)
        self.gelu = nn.GELU()
        self.prompt_multiheadattn = AdapterSelfAttention(channels, num_heads, grid)
        self.image_multiheadattn = AdapterSelfAttention(channels, num_heads, grid)
        self.mlp1 = MLPBlock(channels, 4 * channels)  # image branch
        self.mlp2 = MLPBlock(channels, 4 * channels)  # prompt branch

    def forward(self, image: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_conv = self.image_conv2(self.gelu(self.image_norm(self.image_conv1(image))))
        image_1 = self.image_addnorm1(image_conv + image)
        prompt_conv = self.prompt_conv2(self.gelu(self.prompt_norm(self.prompt_conv1(prompt))))
        prompt_1 = self.prompt_addnorm1(prompt_conv + prompt)

        image_2 = self.image_addnorm2(self.image_multiheadattn(image_1 + image + prompt) + image_1)
        image_3 = self.image_addnorm3(_first(self.mlp1(_last(image_2))) + image_2)
        prompt_2 = self.prompt_addnorm2(self.prompt_multiheadattn(image + prompt_1 + prompt) + prompt_1)
        prompt_3 = self.prompt_addnorm3(_first(self.mlp2(_last(prompt_2))) + prompt_2)
        return image_3, prompt_3


class MaskEnhancedAdapter(nn.Module):
    """MEA(E_I, E_M) -> fused source (B, C, D, H, W) for SAM-Med3D's mask decoder (17,145,024 parameters by default).

    I = LN(E_I), P = LN(E_M); (I''', P''') = `depth` bidirectional blocks; f = I''' + I + P''' + P;
    o = LN(SA(f) + f); out = o + MLP(o).
    """

    def __init__(self, channels: int = 384, *, num_heads: int = 6, grid: int = 8, depth: int = 1) -> None:
        super().__init__()
        self.bidirectional_attentions = nn.ModuleList(
            BidirectionalBlock(channels, num_heads, grid) for _ in range(depth)
        )
        self.multi_head_self_attention = AdapterSelfAttention(channels, num_heads, grid)
        self.add_norm = LayerNorm3d(channels)
        self.add_norm2 = LayerNorm3d(channels)  # prompt pre-norm
        self.add_norm3 = LayerNorm3d(channels)  # image pre-norm
        self.add_norm4 = LayerNorm3d(channels)  # unused, as in the official module (keys and count)
        self.mlp = MLPBlock(channels, 4 * channels)

    def forward(self, image_embedding: torch.Tensor, prompt_embedding: torch.Tensor) -> torch.Tensor:
        """Fuse E_I (B, C, D, H, W) and E_M (B, C, D, H, W) into the decoder's source of the same shape."""
        prompt = self.add_norm2(prompt_embedding)
        image = self.add_norm3(image_embedding)
        image_out, prompt_out = image, prompt
        for block in self.bidirectional_attentions:
            image_out, prompt_out = block(image_out, prompt_out)
        fused = image_out + image + prompt_out + prompt
        out = self.add_norm(self.multi_head_self_attention(fused) + fused)
        return out + _first(self.mlp(_last(out)))
