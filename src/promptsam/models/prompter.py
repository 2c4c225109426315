"""PromptNucSeg's point prompter (DPA-P2PNet): timm backbone + FPN, anchor grid, DPP, MSD, aux mask head.

methods.md §3.1. Coordinates are (x, y) in pixel-index units of the (padded) model input: pixel (x, y) is
column x, row y, its centre at the integer coordinate (the convention of GT points, metrics and SAM prompts).
Module names follow the official code (`deform_layer`, `conv`, `reg_head`, `cls_head`, `mask_head`) except
that the two necks sit at the top level (`neck`, `neck_mask`; official `backbone.neck` / `backbone.neck1`).
"""

from __future__ import annotations

import os

import timm
import torch
import torch.nn.functional as F
from timm.layers.activations import GELU as TimmGELU
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from promptsam.errors import CheckpointError
from promptsam.models.checkpoint import check_state_dict, read_state_dict
from promptsam.models.sam.common import DerivedCache, autocast_cast, conv_gelu, fusable

__all__ = ["FPN", "PointPrompter", "anchor_grid", "pad_to_multiple", "sample_features"]

STRIDES = (4, 8, 16, 32)


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad (B, C, H, W) images at the bottom/right to multiples of `multiple`; return (padded, (H, W))."""
    h, w = images.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph))
    return images, (h, w)


def anchor_grid(height: int, width: int, spacing: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Anchors at (j·λ + λ/2, i·λ + λ/2) as (H/λ, W/λ, 2) (x, y), row-major like the official `AnchorPoints`."""
    xs = torch.arange(width // spacing, device=device, dtype=torch.float32) * spacing + spacing / 2
    ys = torch.arange(height // spacing, device=device, dtype=torch.float32) * spacing + spacing / 2
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def sample_features(
    features: torch.Tensor, points: torch.Tensor, stride: int, *, official: bool = False
) -> torch.Tensor:
    """Bilinearly sample (B, C, h, w) features at (B, gh, gw, 2) pixel points -> (B, C, gh, gw), in float32.

    Default: feature cell k of a stride-s map covers pixels [s·k, s·k + s), centred at s·k + (s - 1)/2, so
    a point p sits at cell index (p + 0.5)/s - 0.5, i.e. grid = 2(p + 0.5)/(s·size) - 1 with
    align_corners=False (exact for both axes; zero padding outside). `official=True` reproduces the
    official code, grid = 2p/(s·size) - 1 with align_corners=True, which maps p to index p·(size-1)/(s·size):
    a shrink towards the origin of up to ~half a cell at the far border (2 px on P2, 16 px on P5).
    Sampling runs in float32 with autocast off: a bf16 grid would be off by up to ~0.5 cell.
    """
    size = torch.tensor(features.shape[:1:-1], dtype=torch.float32, device=points.device)  # (w, h)
    with torch.autocast(device_type=features.device.type, enabled=False):
        if official:
            grid = 2.0 * points.float() / stride / size - 1.0
        else:
            grid = 2.0 * (points.float() + 0.5) / stride / size - 1.0
        return F.grid_sample(features.float(), grid, mode="bilinear", align_corners=official)


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear (the official `MLP(.., num_layers=2, drop)`; keys 0 and 3)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


class FPN(nn.Module):
    """mmdet-style FPN without norm/act: lateral 1x1 on every level, top-down nearest upsample-add, 3x3 output
    conv on the first `num_outs` levels only (the official `num_outs=1` neck keeps all top-down paths)."""

    def __init__(self, in_channels: list[int], out_channels: int, num_outs: int) -> None:
        super().__init__()
        if not 1 <= num_outs <= len(in_channels):
            raise ValueError(f"num_outs must be in 1..{len(in_channels)}, got {num_outs}")
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(num_outs))
        for m in self.modules():  # mmdet init_cfg: Xavier uniform on convs, zero bias
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Map backbone features (fine to coarse) to `num_outs` pyramid levels (fine to coarse)."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=False)]


def _stride_indices(reductions: list[int], name: str) -> list[int]:
    """Indices of the last feature at each stride 4, 8, 16, 32 in a timm `feature_info.reduction()` list."""
    found = {r: i for i, r in enumerate(reductions)}
    missing = [s for s in STRIDES if s not in found]
    if missing:
        raise ValueError(f"backbone {name!r} has feature strides {reductions}; strides {missing} are missing")
    return [found[s] for s in STRIDES]


class FusedConvNeXtBlock(ConvNeXtBlock):
    """timm's ConvNeXt block (conv MLP variant, same keys) whose inference without autograd runs the MLP's first 1x1
    conv and its GELU as one oneDNN kernel and the layer scale folded into the second conv (exact up to rounding;
    ~13 % of the prompter's time on a 1000x1000 image); with autograd it runs timm's forward."""

    folded_cache: DerivedCache

    @staticmethod
    def eligible(block: nn.Module) -> bool:
        """Whether `block` is a conv-MLP ConvNeXt block this fast path computes exactly."""
        mlp = getattr(block, "mlp", None)
        return (
            type(block) is ConvNeXtBlock and getattr(block, "use_conv_mlp", False)
            and isinstance(getattr(mlp, "fc1", None), nn.Conv2d) and isinstance(getattr(mlp, "fc2", None), nn.Conv2d)
            and isinstance(getattr(mlp, "act", None), (nn.GELU, TimmGELU))
            and getattr(mlp.act, "approximate", "none") == "none"
            and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity) and isinstance(block.shortcut, nn.Identity)
        )

    def folded_fc2(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the MLP's second conv times the layer scale."""
        fc2, gamma = self.mlp.fc2, self.gamma
        if gamma is None:
            return fc2.weight, fc2.bias
        return fc2.weight * gamma[:, None, None, None], fc2.bias * gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not fusable(x):
            return super().forward(x)
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        params = (fc2.weight, fc2.bias) + (() if self.gamma is None else (self.gamma,))
        weight2, bias2 = self.folded_cache.get(params, "fc2", self.folded_fc2)
        hidden = conv_gelu(self.norm(self.conv_dw(x)), fc1.weight, fc1.bias, fc1.stride, fc1.padding, fc1.dilation,
                           fc1.groups)
        hidden, weight2, bias2 = autocast_cast(hidden, weight2, bias2)
        # the residual stream keeps its dtype, as in timm's forward
        return F.conv2d(hidden, weight2, bias2, fc2.stride, fc2.padding, fc2.dilation, fc2.groups) + x


def _build_backbone(name: str) -> nn.Module:
    """timm features_only model returning exactly the stride-4/8/16/32 stages (no download: pretrained=False);
    ConvNeXt blocks take the fused inference path (`FusedConvNeXtBlock`)."""
    model = timm.create_model(name, pretrained=False, features_only=True)
    wanted = _stride_indices(model.feature_info.reduction(), name)
    if list(model.feature_info.out_indices) != wanted:
        model = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(wanted))
    for block in model.modules():
        if FusedConvNeXtBlock.eligible(block):
            block.__class__ = FusedConvNeXtBlock
            block.folded_cache = DerivedCache()
    return model


def load_backbone_weights(backbone: nn.Module, name: str, path: str | os.PathLike) -> None:
    """Load a local timm classification state_dict into a features_only backbone.

    File keys are renamed to timm's flattened feature-wrapper names (`stem.0` -> `stem_0`); keys of the full
    model that the feature extractor drops (classifier / head / final norm) are ignored; anything else that
    is missing, unexpected or mis-shaped raises CheckpointError and leaves the backbone untouched.
    """
    state = read_state_dict(path)
    with torch.device("meta"):
        full_keys = set(timm.create_model(name, pretrained=False).state_dict())
    target = set(backbone.state_dict())
    remapped, unexpected = {}, []
    for key, value in state.items():
        head, _, rest = key.partition(".")
        flat = head + "_" + rest if rest else key
        if key in target:
            remapped[key] = value
        elif flat in target:
            remapped[flat] = value
        elif key not in full_keys:
            unexpected.append(key)
    if unexpected:
        more = f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        raise CheckpointError(f"{path}: not a {name} state_dict: unexpected keys {', '.join(unexpected[:3])}{more}")
    check_state_dict(backbone, remapped, source=str(path))
    backbone.load_state_dict(remapped, strict=True)


class PointPrompter(nn.Module):
    """Point detector/classifier: images -> per-anchor refined points, class logits (+ background), mask logits.

    Paper configs: convnext_small, λ = 16 and 4 levels (Kumar, CPM-17) or λ = 8 and 3 levels (PanNuke),
    fpn_channels (hidden_dim) 256, dropout 0.1 in all three MLPs (as the official code).
    Two necks, as the official code: `neck` (Neck A, `num_levels` outputs P2.. for DPP/MSD) and `neck_mask`
    (Neck B, its own lateral/top-down convs and one output P2', feeding only the aux mask head).
    Backbone weights: pass a local timm state_dict file; nothing is ever downloaded.
    `official_quirks=True` reproduces two geometric details of the official code for loading its weights:
    align_corners=True feature sampling (see `sample_features`) and the aux head's 1x1 conv with padding=1
    (a 1-px border of bias-only values) followed by an align_corners=True resize. The default drops the
    padding and resizes with align_corners=False (exact for stride-4 features). BatchNorm2d stands in for
    the official SyncBatchNorm (equivalent on one device).
    """

    def __init__(
        self,
        *,
        backbone: str = "convnext_atto",
        backbone_weights: str | os.PathLike | None = None,
        num_classes: int = 1,
        anchor_spacing: int = 16,
        fpn_channels: int = 256,
        num_levels: int = 4,
        dropout: float = 0.1,
        official_quirks: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= num_levels <= 4:
            raise ValueError(f"num_levels must be 1..4, got {num_levels}")
        if num_classes < 1 or anchor_spacing < 1:
            raise ValueError("num_classes and anchor_spacing must be positive")
        self.num_classes = num_classes
        self.anchor_spacing = anchor_spacing
        self.num_levels = num_levels
        self.official_quirks = official_quirks
        self.backbone = _build_backbone(backbone)
        if backbone_weights is not None:
            load_backbone_weights(self.backbone, backbone, backbone_weights)
        in_channels = list(self.backbone.feature_info.channels())
        c = fpn_channels
        self.neck = FPN(in_channels, c, num_levels)
        self.neck_mask = FPN(in_channels, c, 1)  # Neck B: separate P2' for the aux head (official `neck1`)
        self.deform_layer = _mlp(c, c, 2, dropout)
        self.conv = nn.Conv2d(c * num_levels, c, kernel_size=3, padding=1)
        self.reg_head = _mlp(c, c, 2, dropout)
        self.cls_head = _mlp(c, c, num_classes + 1, dropout)
        self.mask_head = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, 1, kernel_size=1, padding=1 if official_quirks else 0),
        )

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (max of the coarsest stride and λ)."""
        return max(STRIDES[-1], self.anchor_spacing)

    def forward(self, images: torch.Tensor, *, mask_images: int | None = None) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) normalised images -> coords (B, M, 2) float32 (x, y) px, logits (B, M, C+1), mask_logits
        (B, 1, H, W); M = (H/λ)(W/λ) anchors in row-major order, last logit = background. With `mask_images` = k
        the auxiliary mask is computed for the first k images only (mask_logits (k, 1, H, W))."""
        b, _, h, w = images.shape
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"input {h}x{w} must be a multiple of {m} in both sides (use pad_to_multiple)")
        feats = list(self.backbone(images))
        pyramid = self.neck(feats)
        anchors = anchor_grid(h, w, self.anchor_spacing, device=images.device).expand(b, -1, -1, -1)
        # DPP: offset each anchor from the P2 feature under it
        p2 = pyramid[0].float()  # sampled twice (DPP, MSD), in float32: cast once
        roi = sample_features(p2, anchors, STRIDES[0], official=self.official_quirks)
        roi = roi.to(pyramid[0].dtype).permute(0, 2, 3, 1)
        proposals = anchors + self.deform_layer(roi).float()
        # MSD: sample every level at the deformed proposals, fuse, regress and classify
        roi = torch.cat(
            [
                sample_features(p2 if i == 0 else p, proposals, s, official=self.official_quirks).to(p.dtype)
                for i, (p, s) in enumerate(zip(pyramid, STRIDES, strict=False))
            ],
            dim=1,
        )
        roi = self.conv(roi).permute(0, 2, 3, 1)
        coords = proposals + self.reg_head(roi).float()
        logits = self.cls_head(roi)
        mask = self.mask_head(self.neck_mask([f[:mask_images] for f in feats])[0])
        mask = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=self.official_quirks)
        return {"coords": coords.flatten(1, 2), "logits": logits.flatten(1, 2), "mask_logits": mask}
