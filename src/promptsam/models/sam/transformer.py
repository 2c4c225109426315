"""SAM's two-way transformer: prompt tokens and image tokens attend to each other (methods.md §0.4).

The image side dominates the cost: every prompt carries its own copy of the h*w image tokens after the first block.
Exact rewrites keep that side cheap (same weights, same result up to float rounding):

* while the image tokens are still shared by all prompts (first block, one image), their projections are computed
  once and broadcast;
* the cross attentions between the few prompt tokens (T, typically 7) and the image tokens x never project x when
  `num_heads * T <= internal_dim`. Scores are bilinear, `q_h . (W_k,h x + b_k,h)`, so each head's query is folded
  into the weight instead (`(q_h W_k,h) . x + q_h . b_k,h`), and values likewise (`(softmax @ x) W_v,h^T`; rows sum
  to one, so `b_v` passes through). The image->token direction folds `W_q` into the token keys and `W_out` into the
  token values, and adds its residual inside the same batched matmul. Per image token this costs
  `2 * num_heads * T` products per channel instead of `2 * internal_dim`;
* the final token->image attention runs only for the tokens whose outputs are used (`final_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from promptsam.models.sam.common import MLPBlock


class TwoWayTransformer(nn.Module):
    """`depth` two-way attention blocks followed by a final token-to-image attention."""

    def __init__(
        self,
        *,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        final_tokens: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (N or 1, C, *spatial), its PE (N or 1, C, *spatial), tokens (N, T, C) -> tokens, image (N, L, C).

        An image batch of 1 serves every prompt. `final_tokens` selects the token outputs that are needed: the final
        attention is then computed for those queries only and the returned tokens are (N, len(final_tokens), C).
        """
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2)
        return self.run(keys, key_pe, point_embedding, final_tokens)

    def run(
        self,
        keys: torch.Tensor,
        key_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        final_tokens: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` on image tokens already laid out as (N or 1, L, C), contiguous, with PE (N or 1, L, C)."""
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        if final_tokens is not None:
            index = list(final_tokens)
            queries, point_embedding = queries[:, index], point_embedding[:, index]
        keys_pe = keys + key_pe.to(keys.dtype)
        attn = self.final_attn_token_to_image.to_image(queries + point_embedding, keys_pe, keys)
        queries = self.norm_final_attn(queries + attn)
        if keys.shape[0] < queries.shape[0]:
            keys = keys.expand(queries.shape[0], -1, -1)
        return queries, keys


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention; each with LayerNorm."""

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (N, T, C) and image tokens (N or 1, L, C) with PE (N or 1, L, C) -> tokens, image (N, L, C)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        keys_pe = keys + key_pe.to(keys.dtype)  # once per block, for both cross attentions
        queries = self.norm2(queries + self.cross_attn_token_to_image.to_image(queries + query_pe, keys_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.cross_attn_image_to_token.from_image(keys_pe, queries + query_pe, queries, keys)
        return queries, self.norm4(keys)


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the embedding by `downsample_rate`."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend q (B, Nq, C) to k, v (B, Nk, C); a batch of 1 on any side is broadcast, projected once."""
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        b = max(q.shape[0], k.shape[0], v.shape[0])
        q, k, v = (t.expand(b, -1, -1, -1) for t in (q, k, v))
        if q.shape[2] * k.shape[2] <= 1024:  # a few tokens (self-attention): two small matmuls beat SDPA's setup
            out = torch.matmul(torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(2, 3)).softmax(-1), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))

    def _folds(self, tokens: int) -> bool:
        """True when folding the token projections into the weights is cheaper than projecting image tokens."""
        return self.num_heads * tokens <= self.internal_dim

    def _split(self, weight: torch.Tensor) -> torch.Tensor:
        """A projection weight (internal_dim, C) as (heads, head_dim, C)."""
        return weight.view(self.num_heads, -1, weight.shape[-1])

    def _per_head(self, x: torch.Tensor) -> torch.Tensor:
        """Projected tokens (B, T, internal_dim) -> (heads, B*T, head_dim)."""
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, -1).permute(2, 0, 1, 3).reshape(self.num_heads, b * t, -1)

    def _merge_heads(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """(heads, B*T, head_dim) -> (B, T, internal_dim)."""
        return x.view(self.num_heads, b, -1, x.shape[-1]).permute(1, 2, 0, 3).reshape(b, -1, self.internal_dim)

    def to_image(self, tokens: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, C) attend to image tokens (B or 1, L, C): `keys` (image + PE) and `values` -> (B, T, C)."""
        b, t, _ = tokens.shape
        h = self.num_heads
        q = self._per_head(self.q_proj(tokens) * (self.internal_dim // h) ** -0.5)  # (h, B*T, d)
        if keys.shape[0] == values.shape[0] == 1 and (b > 1 or not self._folds(t)):
            # image tokens shared by all prompts: project them once
            k = self._per_head(self.k_proj(keys))  # (h, L, d)
            v = self._per_head(self.v_proj(values))
            out = torch.bmm(torch.bmm(q, k.transpose(1, 2)).softmax(-1), v)
            return self.out_proj(self._merge_heads(out, b))
        if not self._folds(t):
            return self(tokens, keys, values)
        # fold W_k into the queries and W_v after the weighted sum: the image tokens are never projected
        eff = torch.bmm(q, self._split(self.k_proj.weight).to(q.dtype))  # (h, B*T, C)
        eff = eff.view(h, b, t, -1).transpose(0, 1).reshape(b, h * t, -1)
        # q . b_k shifts each softmax row by a constant; kept so that b_k gets its (zero) gradient as in SAM
        bias = torch.bmm(q, self.k_proj.bias.view(h, -1, 1).to(q.dtype))  # (h, B*T, 1)
        bias = bias.view(h, b, t, 1).transpose(0, 1).reshape(b, h * t, 1)
        scores = torch.baddbmm(bias, eff, keys.expand(b, -1, -1).transpose(1, 2))  # (B, h*T, L)
        mixed = torch.bmm(scores.softmax(-1), values.expand(b, -1, -1))  # (B, h*T, C)
        mixed = mixed.view(b, h, t, -1).transpose(0, 1).reshape(h, b * t, -1)
        wv = self._split(self.v_proj.weight).to(mixed.dtype)
        out = torch.baddbmm(self.v_proj.bias.view(h, 1, -1).to(mixed.dtype), mixed, wv.transpose(1, 2))
        return self.out_proj(self._merge_heads(out, b))

    def from_image(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """`image + attention`: image tokens `queries` (image + PE, B or 1, L, C) attend to tokens (B, T, C) with
        `keys` and `values`; the residual `image` (B or 1, L, C) is included. Returns (B, L, C)."""
        b, t, c = values.shape
        h = self.num_heads
        if not self._folds(t):
            return image + self(queries, keys, values)
        scale = (self.internal_dim // h) ** -0.5
        k = self._per_head(self.k_proj(keys))  # (h, B*T, d)
        v = self._per_head(self.v_proj(values))
        if queries.shape[0] == 1 and b > 1:
            # shared image queries: project them once, score against every prompt's tokens in one matmul
            q = self._per_head(self.q_proj(queries) * scale)  # (h, L, d)
            scores = torch.bmm(k, q.transpose(1, 2))  # (h, B*T, L)
            attn = scores.view(h, b, t, -1).softmax(2).transpose(0, 1).reshape(b, h * t, -1)
        else:
            # fold W_q (and the scale) into the token keys, plus a per-key bias b_q . k
            wq = self._split(self.q_proj.weight).to(k.dtype) * scale  # (h, d, C)
            rows = torch.bmm(k, wq).view(h, b, t, c).transpose(0, 1).reshape(b, h * t, c)
            bias = torch.bmm(k, self.q_proj.bias.view(h, -1, 1).to(k.dtype) * scale)  # (h, B*T, 1)
            bias = bias.view(h, b, t, 1).transpose(0, 1).reshape(b, h * t, 1)
            scores = torch.baddbmm(bias, rows, queries.expand(b, -1, -1).transpose(1, 2))  # (B, h*T, L)
            attn = scores.view(b, h, t, -1).softmax(2).view(b, h * t, -1)
        # fold W_out into the token values; each head's weights sum to one, so b_out / h per head adds b_out once
        wo = self.out_proj.weight.T.reshape(h, -1, c).to(v.dtype)  # (h, d, C)
        proj = torch.baddbmm(self.out_proj.bias.to(v.dtype) / h, v, wo)  # (h, B*T, C)
        proj = proj.view(h, b, t, c).transpose(0, 1).reshape(b, h * t, c)
        return torch.baddbmm(image, attn.transpose(1, 2), proj)
