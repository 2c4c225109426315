"""SAM's ViTDet-style image encoder (ViT-B/L/H): windowed and global attention with decomposed relative positions.

State-dict keys equal the official `image_encoder.*` keys. Parameter shapes stay those of the 1024 checkpoint at any
input size: the absolute position embedding is resized bicubically and the relative-position tables linearly at
forward time (methods.md §0.6), so official files load strictly whatever the input size.

Large inputs are processed in chunks so that no intermediate exceeds `CHUNK_BYTES`: at 1024 input a global block's
additive attention bias would be (heads, 4096, 4096), 805 MB in fp32. Tensors that large are freshly mmap-ed by the
allocator on every call and page-faulted in (glibc serves only blocks <= 32 MB from its reusable heap), which cost
more than the attention itself; chunks of a few MB are reused from the heap and stay in cache. Results are
unchanged: every chunk computes the same numbers as the whole.

Not done, measured slower on CPU: folding the bias into the dot product. With bias[i, j] = rel_h[i, row(j)] +
rel_w[i, col(j)], q' = [scale * q, rel_h, rel_w] and k' = [k, onehot(row(j)), onehot(col(j))] give q'·k' = scale * q·k
+ bias exactly, so SDPA needs no mask; but CPU flash attention needs v's head dim equal to q's (else it falls back to
the math kernel), so q, k and v all grow from 64 to 64 + h + w (192 at 1024 input) and the attention does 3x the work.
One 1024-input global block, one thread: folded 1.9 s, whole mask 1.6 s, mask by row chunks ~1.0 s (bf16: 1.8, 1.25,
1.0 s); windows and the 256-input global blocks were slower folded in fp32 and about even in bf16.

bf16 on CPU (autocast) attends with `bf16_attention`, not SDPA: CPU flash attention is no faster in bf16 than in fp32 on
AVX512-BF16 CPUs without AMX (~40 GFLOP/s against a ~205 GFLOP/s one-thread bf16 matmul peak), which held ViT-B at 1024
input to 47 % of that peak, 45 % of its time in the four global blocks' SDPA. Per score tile of BF16_TILE_BYTES (fp32;
at 1024 input one head x 2 query rows x 4096 keys, for windows several (window, head) pairs at once), scale q·k and p·v
are bf16 matmuls and everything between is fp32: the scores are cast up, the two decomposed bias terms (from fp32 q·R)
are added by broadcasting and the softmax is cast to bf16 for p·v. Only the bf16 rounding of scale q·k comes before the
softmax, so it is more accurate than SDPA with a bf16 bias: on peaked attention (logits up to ~12) outputs are 5-8x
closer to fp64 (max abs error 0.03-0.05 against 0.2-0.35). One thread, one 1024-input global block: SDPA 1.0 s, this
~0.55 s (q·k 0.19, p·v 0.15, softmax 0.14, casts 0.08, bias adds 0.04 s); a window group (16 windows of 196 tokens)
54 -> 36 ms.

Measured and not kept: bf16 bias adds into bf16 scores (as fast at 1024 but 1.3x slower than SDPA in windows, bf16
broadcast adds being slow, and 1.3x SDPA's error; with an fp32 bias the in-place bf16 add goes through temporary copies,
+0.3 s a 1024 forward), fp32 q·k (0.7-0.8 s per block), the bias folded into q·k (see above; as fast for windows and
grids up to 32, but the whole logit is then rounded to bf16: SDPA's accuracy), keys-major scores (softmax over dim -2 is
slower), 2D mm per head, preallocated outputs, tiles of 0.25-4 MB (all within noise).

Windowed blocks pad each window group's slab on its own instead of the whole qkv grid (70 x 70 x 2304 at 1024 input,
22 MB in bf16, page-faulted on every call), and the padding token's qkv is the qkv bias. The rest of the bf16 forward is
matmul-bound: the linears run at ~190 GFLOP/s, GELU, LayerNorm and the residual adds take ~2 %; autocast re-casting the
85 M linear weights costs ~20 ms a forward (6 % at 256 input, 0.3 % at 1024), not cached because a bf16 copy of the
weights would stay in memory (170 MB for ViT-B, 1.3 GB for ViT-H). ViT-B, one thread, same process, bf16 (before ->
after): 1024 input 9.69 -> 6.64 s (47 -> 68 % of the bf16 peak, 938 GFLOP; 3.0x the reference's fp32 20.0 s), 256 input
0.345 -> 0.327 s (65 -> 68 %). bf16 vs fp32 embeddings (std 1.0, random weights) stay at max abs 0.05-0.065, mean 0.009:
equal to or below the previous errors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from promptsam.models.sam.common import MLPBlock, sam_neck

# Largest attention-bias or MLP-hidden chunk materialised at once (bytes); see the module docstring.
CHUNK_BYTES = 8 * 2**20
# Score tile (heads x query rows x keys, fp32) of the bf16 CPU attention in bytes; see the module docstring.
BF16_TILE_BYTES = 2 * 2**20


class ImageEncoderViT(nn.Module):
    """ViT image encoder: (B, 3, H, W) with H, W multiples of 16 -> (B, out_chans, H/16, W/16)."""

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                rel_pos_size=grid if i in global_attn_indexes else window_size,
            )
            for i in range(depth)
        )
        self.neck = sam_neck(embed_dim, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + resize_pos_embed(self.pos_embed, x.shape[1:3]).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, C, H, W) -> (B, H/p, W/p, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block with windowed (window_size > 0) or global attention."""

    def __init__(
        self, *, dim: int, num_heads: int, mlp_ratio: float, window_size: int, rel_pos_size: int
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, rel_pos_size=rel_pos_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), window=self.window_size)
        # the MLP is per token: run it on row chunks so that its (rows, w, 4*dim) hidden stays small
        b, h, w, _ = x.shape
        rows = max(1, CHUNK_BYTES // (b * w * self.mlp.lin1.out_features * x.element_size()))
        if rows >= h:
            return x + self.mlp(self.norm2(x))
        return torch.cat([xi + self.mlp(self.norm2(xi)) for xi in x.split(rows, dim=1)], dim=1)


class Attention(nn.Module):
    """Multi-head attention with MViTv2 decomposed relative positions: SDPA, or `bf16_attention` for bf16 on CPU."""

    def __init__(self, dim: int, num_heads: int, *, rel_pos_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))

    def forward(self, x: torch.Tensor, window: int = 0) -> torch.Tensor:
        """Global attention (window 0) or attention inside zero-padded square windows of side `window`."""
        h, w = x.shape[1:3]
        qkv = self.qkv(x)
        if window == 0:
            return self.proj(self.attend(qkv))
        # The official code zero-pads the normalised tokens to whole windows; a zero token projects to qkv(0), so qkv
        # and proj run on the h*w real tokens only. Padded tokens are keys but their outputs are dropped: windows are
        # grouped by how many of their rows and columns are real (full ones; the last window row / column) and each
        # group attends for its real queries only (at 256 input, 256 of the 16x16 grid's 784 padded tokens).
        # qkv(0) is the qkv bias; each group's slab is padded on its own (no padded copy of the whole grid)
        fill = self.qkv.bias if self.qkv.bias is not None else self.qkv(x.new_zeros(x.shape[-1]))
        groups = [
            [self.attend_windows(pad_slab(qkv, rows, cols, fill), window, (qh, qw)) for cols, qw in spans(w, window)]
            for rows, qh in spans(h, window)
        ]
        return self.proj(torch.cat([torch.cat(group, dim=2) for group in groups], dim=1))

    def attend_windows(self, slab: torch.Tensor, window: int, q_size: tuple[int, int]) -> torch.Tensor:
        """Attention in the windows of a slab (B, nh * window, nw * window, 3C) of the padded grid whose windows all
        hold q_size = (qh, qw) real tokens at their start, for those queries -> (B, nh * qh, nw * qw, C)."""
        nh, nw = slab.shape[1] // window, slab.shape[2] // window
        return merge_windows(self.attend(window_partition(slab, window), q_size), (nh, nw))

    def attend(self, qkv: torch.Tensor, q_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Attention over token grids (N, h, w, 3C) for the queries [:qh, :qw] -> (N, qh, qw, C), by query rows.

        bf16 on CPU goes to `bf16_attention`. Otherwise SDPA: the additive bias of a chunk of query rows is
        (N, heads, rows * qw, h * w); rows are chosen so that it stays under CHUNK_BYTES (one chunk, i.e. the plain
        computation, whenever the whole bias fits).
        """
        n, h, w, _ = qkv.shape
        qh, qw = q_size or (h, w)
        heads = self.num_heads
        q, k, v = qkv.reshape(n, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (N, heads, h*w, c)
        if (qh, qw) != (h, w):
            q = q.reshape(n, heads, h, w, -1)[:, :, :qh, :qw].reshape(n, heads, qh * qw, -1)
        r_h = rel_pos_table(self.rel_pos_h, h)[:qh]
        r_w = rel_pos_table(self.rel_pos_w, w)[:qw]
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            flat = [t.reshape(n * heads, t.shape[2], -1) for t in (q, k, v)]
            x = bf16_attention(*flat, r_h, r_w, self.scale).view(n, heads, qh * qw, -1)
            return x.transpose(1, 2).reshape(n, qh, qw, -1)
        r_h, r_w = r_h.to(q.dtype), r_w.to(q.dtype)
        rows = max(1, CHUNK_BYTES // (n * heads * qw * h * w * q.element_size()))
        out = [
            F.scaled_dot_product_attention(
                q_i, k, v, attn_mask=decomposed_rel_pos_bias(q_i, r_h[i : i + rows], r_w), scale=self.scale
            )
            for i, q_i in zip(range(0, qh, rows), q.split(rows * qw, dim=2), strict=True)
        ]
        x = out[0] if len(out) == 1 else torch.cat(out, dim=2)
        return x.transpose(1, 2).reshape(n, qh, qw, -1)


def rel_pos_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair of a 1D grid of `size`: (size, size, head_dim)."""
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.T[None], size=length, mode="linear")[0].T
    offsets = torch.arange(size, device=rel_pos.device)
    return rel_pos[offsets[:, None] - offsets[None, :] + size - 1]


@torch.autocast("cpu", enabled=False)
def bf16_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_h: torch.Tensor, r_w: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(scale q·k + q·R_h + q·R_w) v with the two products as bf16 matmuls, by score tiles of BF16_TILE_BYTES.

    Queries (B, qh * qw, c) on a (qh, qw) grid, keys and values (B, h * w, c), all bf16, tables R_h (qh, h, c) and
    R_w (qw, w, c) from `rel_pos_table` -> (B, qh * qw, c). The bias terms, their sum with the bf16 scores and the
    softmax are fp32 (module docstring).
    """
    b, _, c = q.shape
    (qh, h), (qw, w) = r_h.shape[:2], r_w.shape[:2]
    r_q = q.reshape(b, qh, qw, c).float()
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, r_h.float()).contiguous()[..., :, None]  # (B, qh, qw, h, 1)
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, r_w.float()).contiguous()[..., None, :]  # (B, qh, qw, 1, w)
    q, k_t, v = q * scale, k.transpose(1, 2).contiguous(), v.contiguous()
    row_bytes = qw * h * w * 4
    rows = max(1, min(qh, BF16_TILE_BYTES // row_bytes))
    group = max(1, BF16_TILE_BYTES // (qh * row_bytes)) if rows == qh else 1
    out = []
    for i in range(0, b, group):
        chunks = []
        for j in range(0, qh, rows):
            s = torch.matmul(q[i : i + group, j * qw : (j + rows) * qw], k_t[i : i + group]).float()
            s_grid = s.view(s.shape[0], -1, qw, h, w)
            s_grid.add_(bias_h[i : i + group, j : j + rows]).add_(bias_w[i : i + group, j : j + rows])
            chunks.append(torch.matmul(torch.softmax(s, dim=-1).to(q.dtype), v[i : i + group]))
        out.append(chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1))
    return out[0] if len(out) == 1 else torch.cat(out, dim=0)


def decomposed_rel_pos_bias(q: torch.Tensor, r_h: torch.Tensor, r_w: torch.Tensor) -> torch.Tensor:
    """Additive attention bias q·R_h + q·R_w, contiguous.

    Queries (N, heads, hq * wq, c) on an (hq, wq) grid, tables R_h (hq, hk, c) and R_w (wq, wk, c) from
    `rel_pos_table` (row slices of it for a chunk of query rows) -> (N, heads, hq * wq, hk * wk).
    """
    n, heads, _, c = q.shape
    (hq, hk), (wq, wk) = r_h.shape[:2], r_w.shape[:2]
    r_q = q.reshape(n, heads, hq, wq, c)
    # einsum returns permuted layouts; contiguous terms make the broadcast sum contiguous (no copy in reshape)
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h).contiguous()
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w).contiguous()
    return (bias_h[..., :, None] + bias_w[..., None, :]).reshape(n, heads, hq * wq, hk * wk)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a (1, H, W, C) absolute position embedding to `grid` (unchanged when equal)."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2), size=tuple(grid), mode="bicubic", align_corners=False
    )
    return resized.permute(0, 2, 3, 1)


def pad_slab(x: torch.Tensor, rows: slice, cols: slice, value: torch.Tensor) -> torch.Tensor:
    """x[:, rows, cols] of (B, H, W, C), with the part beyond H or W filled with the vector `value`."""
    b, _, _, c = x.shape
    slab = x[:, rows, cols]
    hs, ws = rows.stop - rows.start, cols.stop - cols.start
    if slab.shape[1:3] == (hs, ws):
        return slab
    out = value.to(x.dtype).expand(b, hs, ws, c).clone()
    out[:, : slab.shape[1], : slab.shape[2]] = slab
    return out


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """Split (B, H, W, C), both sides multiples of `window`, into (B * nW, window, window, C) windows."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def spans(size: int, window: int) -> list[tuple[slice, int]]:
    """An axis of `size` padded to whole windows, as (slice of the padded axis, real tokens per window) groups: the
    full windows, then the last window if it is partly padding."""
    full = size // window * window
    groups = [(slice(0, full), window)] if full else []
    if full < size:
        groups.append((slice(full, full + window), size - full))
    return groups


def merge_windows(windows: torch.Tensor, counts: tuple[int, int]) -> torch.Tensor:
    """Merge (B * nh * nw, qh, qw, C) windows laid out as in `window_partition` into (B, nh * qh, nw * qw, C)."""
    nh, nw = counts
    n, qh, qw, c = windows.shape
    x = windows.view(n // (nh * nw), nh, nw, qh, qw, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, nh * qh, nw * qw, c)
