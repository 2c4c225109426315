"""PromptNucSeg (ECCV 2024): a point prompter finds every nucleus, a fine-tuned SAM draws each one.

Pipeline (methods.md §3):  image -> prompter -> points (+ classes) -> SAM segmentor, one positive point per
nucleus with its K nearest nuclei as negatives, sliding windows -> merge (best candidate per prompt, box NMS,
paint by score) -> instance map (+ class map).

The two models are trained separately, as in the paper (`PrompterTask`, `SegmentorTask`, driven by Lightning in
`promptsam.training`), and so is our optional point centring CNN between them ([A], `CentringTask`);
`PromptNucSeg` bundles them for inference and is saved as one file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from promptsam.config import from_dict, load_preset, to_dict
from promptsam.data.sampling import prompt_map, sample_point_prompts
from promptsam.data.targets import nucleus_points
from promptsam.device import PRECISIONS, autocast, pick_device, resolve_precision
from promptsam.errors import CheckpointError, InputError, PromptSAMError
from promptsam.inference.merge import keep_large, largest_pieces, shrink_labels
from promptsam.inference.point_segmentation import merge_candidates, segment_points
from promptsam.inference.points import decode_points, merge_views, nucleus_diameter, point_nms, size_nms
from promptsam.inference.preprocess import to_rgb255, zoom_image
from promptsam.io.atomic import atomic_path
from promptsam.losses.prompter import prompter_loss
from promptsam.losses.segmentor import segmentor_loss
from promptsam.metrics import detection_scores, score_instances
from promptsam.metrics.detection import match_points
from promptsam.models import build_sam
from promptsam.models.adapters import add_lora, onto_lora
from promptsam.models.centring import PointCentring, centre_crops, jittered_points
from promptsam.models.checkpoint import check_state_dict
from promptsam.models.prompter import PointPrompter, pad_to_multiple
from promptsam.models.sam.detail import DetailEncoder, PointRefiner
from promptsam.models.sam.sam import PIXEL_MEAN, PIXEL_STD
from promptsam.training import TrainingConfig, with_lr_schedule


# ----------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class PrompterConfig:
    """The point prompter and its training recipe (§3.1-3.2, §3.6)."""

    backbone: str = "convnext_small"
    backbone_weights: str | None = None
    num_classes: int = 1
    anchor_spacing: int = 16
    fpn_channels: int = 256
    num_levels: int = 4
    alpha: float = 0.1  # matching cost weight of the point distance
    beta: float = 0.2  # background class weight (eos_coef)
    gamma: float = 5e-3  # regression weight
    nms_radius: float = 12.0
    mask_filter: bool = True  # MAPF: on for Kumar/CPM-17, off in the PanNuke configs
    mask_filter_logit: float = 0.0  # [A] MAPF keeps points where the nucleus mask's logit exceeds this (paper: 0)
    min_foreground: float | None = None  # [A] keep anchors with P(nucleus) >= this; None = the paper's argmax rule
    test_time_flips: bool = False  # [A] points found in >= 2 of 4 flipped views, averaged (points.merge_views)
    nms_diameters: float | None = None  # [A] point NMS radius at least this many of the image's estimated nucleus
    # diameters (inference.points.nucleus_diameter): fewer duplicate points in large nuclei; None = nms_radius only
    centring: bool = False  # [A] a small CNN moves each point onto its nucleus's centroid (models.centring), trained
    # in its own stage (`--stage centring`); the segmentor draws a nucleus best from its centroid
    centring_steps: int = 1  # how many times each point is moved (2 gave the same mean validation PQ at 2x the time)
    crop: int = 256
    scale_augment: tuple[float, float] = (0.8, 1.25)  # [A] random magnification of training crops (RandomScale)
    scale_augment_p: float = 0.3
    stain_augment: float = 0.0  # [A] sigma of the H&E stain jitter of colour training crops (transforms.StainJitter,
    # Tellez et al. 2018 use 0.05); 0 = off (the paper's augmentation has no stain jitter)
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1


@dataclass(frozen=True)
class SegmentorConfig:
    """The SAM segmentor and its training recipe (§3.3)."""

    sam: str = "vit_b"
    checkpoint: str | None = None  # official SAM / MobileSAM file to start from; None = from scratch
    image_size: int = 256
    scale: float = 1.0  # magnification at which SAM sees the image (1 = native, as in the paper; 2 = upsampled 2x)
    pe_scale: float = 1.0  # from scratch only: std of the prompt encoder's random Fourier frequencies (SAM: 1)
    detail: bool = False  # [A] add a high-resolution image branch to the mask decoder (models.sam.detail)
    refine: bool = False  # [A] per-object correction of the logits around each point (models.sam.detail.PointRefiner)
    num_objects: int = 25  # Z prompts per training image
    num_negatives: int = 0  # K: the released configs use 0, the paper's full model 1
    point_jitter: float | None = None  # [A] training points near each centroid with this std (native pixels), as the
    # prompter places them; None = a uniformly random interior pixel (the paper)
    duplicate_negatives: float = 0.0  # [A] share of training objects whose negative is a second point in the same
    # nucleus (data.sampling.sample_point_prompts' duplicate_share); 0 = the paper
    own_points: float = 0.0  # [A] share of training nuclei prompted where this model's own prompter puts its point
    # (found once per stage on the whole training images); > 0 also validates with the prompter's points
    focal_weight: float = 20.0
    stain_augment: float = 0.0  # [A] as prompter.stain_augment, for the segmentor's training crops
    peft: str | None = None  # None = full fine-tuning (paper); "lora" = LoRA on the encoder's attention
    lora_rank: int = 4
    lora_parts: str | None = None  # None: one LoRA on the fused qkv; "qv": q and v only, each its own pair (SAC, SAMed)
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window inference and merging (§3.4)."""

    overlap: int = 64
    window_batch: int = 8  # SAM windows encoded at once (1000x1000 H&E at 2 threads: 4.75 s at 8, 5.0 s at 4)
    nms_iou: float = 0.3
    negative_min_distance: float = 0.0  # [A] native pixels; negatives nearer than this are skipped (duplicates)
    also_without_negatives: bool = True  # with K > 0, keep a second candidate decoded without negatives
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 where the hardware has it)
    min_area: int = 4
    mask_threshold: float = 0.0  # logit above which a pixel joins its nucleus's mask (SAM's 0)
    clip_to_foreground: bool = False  # [A] keep only mask pixels the prompter's auxiliary nucleus mask calls nucleus
    nucleus_diameter: float | None = None  # [A] magnify each image so its typical nucleus (inference.points.
    # nucleus_diameter) is this many SAM pixels across, within scale_range; None = segmentor.scale for every image
    scale_range: tuple[float, float] = (1.0, 3.0)
    # [A] keep each nucleus' largest 8-connected piece (drops stray fragments; default model, validation PQ
    # 0.285 / 0.566 / 0.198 -> 0.287 / 0.580 / 0.209 on MoNuSeg / DSB2018 / CoNSeP)
    one_piece: bool = True

    def __post_init__(self) -> None:
        low, high = self.scale_range
        checks = {  # setting: (valid, what it must be)
            "overlap": (self.overlap >= 0, ">= 0"), "window_batch": (self.window_batch >= 1, ">= 1"),
            "nms_iou": (0 < self.nms_iou <= 1, "in (0, 1]"),
            "negative_min_distance": (self.negative_min_distance >= 0, ">= 0"),
            "min_area": (self.min_area >= 0, ">= 0"),
            "precision": (self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            "nucleus_diameter": (self.nucleus_diameter is None or self.nucleus_diameter > 0, "> 0 or null"),
            "scale_range": (0 < low <= high, "[low, high] with 0 < low <= high"),
        }
        for name, (ok, rule) in checks.items():
            if not ok:
                raise PromptSAMError(f"inference.{name}={getattr(self, name)!r}: must be {rule}")


@dataclass(frozen=True)
class PromptNucSegConfig:
    """Everything that defines a PromptNucSeg model and its training."""

    name: str = "promptnucseg"
    class_names: tuple[str, ...] = ("nucleus",)
    prompter: PrompterConfig = field(default_factory=PrompterConfig)
    segmentor: SegmentorConfig = field(default_factory=SegmentorConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        if self.inference.overlap >= self.segmentor.image_size:
            raise PromptSAMError(f"inference.overlap={self.inference.overlap}: must be smaller than the SAM window "
                                 f"(segmentor.image_size={self.segmentor.image_size})")


def load_config(preset: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PromptNucSegConfig:
    """Config of a preset name (`promptnucseg_cpu`, `promptnucseg_kumar`, ...) or YAML file, with overrides."""
    return load_preset(PromptNucSegConfig, preset, overrides)


# -------------------------------------------------------------------------------------------------- the model
FLIPS = ((False, False), (False, True), (True, False), (True, True))  # (vertical, horizontal) test-time flips
# magnifications a given nucleus diameter may ask for (`scale_for_diameter`): wider than the estimate's scale_range,
# which guards against a wrong estimate; beyond these the image would be drawn at a scale far from training.
DIAMETER_SCALES = (0.25, 8.0)

@dataclass
class NucleusSegmentation:
    """Result of segmenting one image: instance map, class map (or None), and per-instance prompt data."""

    labels: np.ndarray  # (H, W) uint32, 0 = background, 1..N
    classes: np.ndarray | None  # (H, W) uint8 class ids, 0 = background; None for class-agnostic models
    points: np.ndarray  # (N, 2) (x, y) prompt of instance i+1
    point_classes: np.ndarray  # (N,) class id of instance i+1
    scores: np.ndarray  # (N,) predicted IoU of instance i+1
    class_names: tuple[str, ...] = ()
    scale: float = 1.0  # magnification at which SAM drew this image


def build_prompter(cfg: PrompterConfig) -> PointPrompter:
    """The point prompter described by `cfg`."""
    return PointPrompter(
        backbone=cfg.backbone,
        backbone_weights=cfg.backbone_weights,
        num_classes=cfg.num_classes,
        anchor_spacing=cfg.anchor_spacing,
        fpn_channels=cfg.fpn_channels,
        num_levels=cfg.num_levels,
    )


def build_segmentor(cfg: SegmentorConfig) -> nn.Module:
    """The SAM segmentor described by `cfg` (official weights loaded when `cfg.checkpoint` is set)."""
    sam = build_sam(cfg.sam, checkpoint=cfg.checkpoint, image_size=cfg.image_size)
    if cfg.checkpoint is None and cfg.pe_scale != 1:
        # [A] SAM's frozen frequencies (std 1) span ~3 periods per image side: too smooth to tell apart nuclei
        # 16 px apart in a 256 window, which a pretrained decoder copes with but one trained from scratch does not.
        with torch.no_grad():
            sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(cfg.pe_scale)
    if cfg.detail:
        sam.detail = DetailEncoder(channels=sam.mask_decoder.transformer_dim // 8)
    if cfg.refine:
        if not cfg.detail:
            raise ValueError("segmentor.refine needs segmentor.detail (it reads the detail features)")
        sam.refine = PointRefiner(channels=sam.mask_decoder.transformer_dim // 8)
    if cfg.peft == "lora":
        add_lora(sam.image_encoder, rank=cfg.lora_rank, parts=cfg.lora_parts)
    elif cfg.peft is not None:
        raise ValueError(f"unknown peft method {cfg.peft!r}; use 'lora' or none")
    return sam


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) 0-255 float -> ImageNet/SAM-normalised."""
    mean = torch.tensor(PIXEL_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


# Never run by PromptNucSeg, so not saved (they keep their initial values on loading): MobileSAM's TinyViT keeps its
# ImageNet classifier (official key names), and with one mask per prompt (multimask off, as the paper) the mask
# decoder's hypernetwork MLPs of the three other mask tokens never run.
UNUSED_SEGMENTOR_KEYS = ("image_encoder.head.", "image_encoder.norm_head.",
                         *(f"mask_decoder.output_hypernetworks_mlps.{i}." for i in (1, 2, 3)))


class PromptNucSeg(nn.Module):
    """Prompter + SAM segmentor: `segment(image)` gives every nucleus as an instance, with no manual prompts."""

    def __init__(self, config: PromptNucSegConfig) -> None:
        super().__init__()
        self.config = config
        self.prompter = build_prompter(config.prompter)
        self.segmentor = build_segmentor(config.segmentor)
        self.centring = PointCentring() if config.prompter.centring else None

    @property
    def parts(self) -> tuple[str, ...]:
        """Names of the trained parts this model holds (each saved under its own key)."""
        return ("prompter", "segmentor") + (("centring",) if self.centring is not None else ())

    # ---- step 1: prompts
    @torch.inference_mode()
    def find_prompts(self, image: np.ndarray, *, autocast_dtype: torch.dtype | None = None,
                     fast: bool = False) -> dict[str, np.ndarray]:
        """Points (N, 2) (x, y), classes (N,) and scores (N,) of every nucleus the prompter finds in a 0-255 image,
        and its auxiliary nucleus mask `foreground` (H, W) bool; `fast` looks at the image once, without the
        model's test-time flips."""
        device = next(self.prompter.parameters()).device
        cfg = self.config.prompter
        h, w = image.shape[:2]
        flips = FLIPS if cfg.test_time_flips and not fast else FLIPS[:1]
        views = np.stack([image[::-1 if fy else 1, ::-1 if fx else 1] for fy, fx in flips])
        x = normalize_images(torch.from_numpy(views).permute(0, 3, 1, 2).float().to(device))
        x, _ = pad_to_multiple(x, max(32, cfg.anchor_spacing))
        with autocast(device, autocast_dtype):
            outputs = self.prompter(x, mask_images=1)  # the nucleus mask of the unflipped view serves all views
        outputs = {k: v.float() for k, v in outputs.items()}
        mask = outputs["mask_logits"][..., :h, :w]
        pad = (0, x.shape[-1] - w, 0, x.shape[-2] - h)
        outputs["mask_logits"] = torch.cat([F.pad(mask.flip([d for d, f in ((-2, fy), (-1, fx)) if f]), pad)
                                            for fy, fx in flips])
        per_view = decode_points(outputs, image_size=(h, w), nms_radius=cfg.nms_radius, mask_filter=cfg.mask_filter,
                                 mask_filter_logit=cfg.mask_filter_logit,
                                 min_foreground=cfg.min_foreground)
        for i, (fy, fx) in enumerate(flips):  # every view's points back on the image grid
            pts = per_view[i]["points"]
            if fx:
                pts[:, 0] = w - 1 - pts[:, 0]
            if fy:
                pts[:, 1] = h - 1 - pts[:, 1]
        found = per_view[0] if len(flips) == 1 else merge_views(per_view, radius=cfg.nms_radius)
        found["foreground"] = (mask[0, 0] > 0).cpu().numpy()
        if cfg.nms_diameters:
            self._suppress(found)
        if self.centring is not None and len(found["points"]):
            pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
            found["points"] = self.centring.recentre(pixels, found["points"], steps=cfg.centring_steps)
            self._suppress(found)  # two points of one nucleus now meet at its centroid: keep one
        return found

    def _suppress(self, found: dict[str, np.ndarray]) -> None:
        """Point NMS of `find_prompts`' output in place: within `nms_radius`, or `nms_diameters` nucleus diameters."""
        cfg = self.config.prompter
        if cfg.nms_diameters:
            kept = size_nms(found["points"], found["scores"], found["foreground"], radius=cfg.nms_radius,
                            diameters=cfg.nms_diameters)
        else:
            kept = point_nms(found["points"], found["scores"], cfg.nms_radius)
        found.update({k: found[k][kept] for k in ("points", "classes", "scores")})

    # ---- steps 2-3: SAM draws each prompt, then merge
    @torch.inference_mode()
    def segment(self, image: np.ndarray, *, points: np.ndarray | None = None,
                point_classes: np.ndarray | None = None, fast: bool = False,
                scale: float | None = None, diameter: float | None = None) -> NucleusSegmentation:
        """Segment every nucleus of an (H, W) or (H, W, 3) image of any dtype; `points` skips the prompter (without
        `point_classes` a typed model leaves them unclassified, 0); `fast`
        skips the prompter's test-time flips of models that use them (~1.3x faster on H&E; the default model v5
        has them off: with them its validation PQ was 0.353 / 0.603 / 0.250 vs 0.350 / 0.611 / 0.249 without);
        `scale` fixes SAM's magnification instead of reading it off
        this image (`magnification`), as the blocks of one large image share it; `diameter` (the typical nucleus's
        diameter in image pixels, as Cellpose's) sets it from a known nucleus size (`scale_for_diameter`)."""
        if diameter is not None:
            if scale is not None:
                raise ValueError("give scale or diameter, not both")
            scale = self.scale_for_diameter(diameter)
        rgb = to_rgb255(image)
        device = next(self.parameters()).device
        dtype = resolve_precision(self.config.inference.precision, device)
        inf = self.config.inference
        foreground = None
        if points is None or inf.clip_to_foreground or (inf.nucleus_diameter and scale is None):
            prompts = self.find_prompts(rgb, autocast_dtype=dtype, fast=fast)
            foreground = prompts["foreground"]
        if points is None:
            points, point_classes = prompts["points"], prompts["classes"]
        points = np.asarray(points, np.float32).reshape(-1, 2)
        if scale is None:
            scale = self.magnification(prompts) if inf.nucleus_diameter else self.config.segmentor.scale
        if point_classes is None:  # given points without types: a typed model leaves them unclassified (0)
            point_classes = np.full(len(points), 0 if self.config.prompter.num_classes > 1 else 1, np.int64)
        point_classes = np.asarray(point_classes)
        seen = zoom_image(rgb, scale)  # SAM draws at its training magnification, results return to the input grid
        candidates = segment_points(
            self.segmentor, seen, (points + 0.5) * scale - 0.5, overlap=inf.overlap,
            num_negatives=self.config.segmentor.num_negatives, negative_min_distance=inf.negative_min_distance * scale,
            also_without_negatives=inf.also_without_negatives,
            window_batch=inf.window_batch, autocast_dtype=dtype, mask_threshold=inf.mask_threshold,
        )
        labels, painted = merge_candidates(candidates, seen.shape[:2], nms_iou=inf.nms_iou, min_area=inf.min_area)
        if scale != 1:
            labels, kept = shrink_labels(labels, rgb.shape[:2], min_area=inf.min_area)
            painted = painted[kept - 1]
        if inf.clip_to_foreground:
            labels[~foreground] = 0
            labels, kept = keep_large(labels, min_area=inf.min_area)
            painted = painted[kept - 1]
        if inf.one_piece:
            labels, kept = keep_large(largest_pieces(labels), min_area=inf.min_area)
            painted = painted[kept - 1]
        owner = candidates.prompt_index[painted]
        cls = point_classes[owner].astype(np.uint8)
        classes = None
        if self.config.prompter.num_classes > 1:
            classes = np.concatenate([[0], cls]).astype(np.uint8)[labels]
        return NucleusSegmentation(labels=labels, classes=classes, points=points[owner], point_classes=cls,
                                   scores=candidates.scores[painted], class_names=self.config.class_names,
                                   scale=scale)

    def scale_for_diameter(self, diameter: float) -> float:
        """SAM's magnification for nuclei `diameter` image pixels across (equal-area circle of the typical nucleus):
        the one that draws them `inference.nucleus_diameter` pixels across, as the per-image estimate would."""
        target = self.config.inference.nucleus_diameter
        if not target:
            raise InputError(f"this model draws every image at magnification {self.config.segmentor.scale:g} "
                             "(no inference.nucleus_diameter): it takes no nucleus diameter")
        try:
            diameter = float(diameter)
        except (TypeError, ValueError):
            diameter = float("nan")
        if not (np.isfinite(diameter) and diameter > 0):
            raise InputError("nucleus diameter: must be a positive number of pixels")
        scale = target / diameter
        low, high = DIAMETER_SCALES
        if not low <= scale <= high:
            raise InputError(f"nucleus diameter {diameter:g} px: outside what this model draws, {target / high:g} to "
                             f"{target / low:g} px (SAM draws nuclei {target:g} px across, magnifying "
                             f"{low:g}-{high:g}x)")
        return scale

    def magnification(self, prompts: dict[str, np.ndarray]) -> float:
        """SAM's magnification for an image from `find_prompts`' output: its typical nucleus drawn
        `inference.nucleus_diameter` pixels across (within `inference.scale_range`), else the segmentor's scale."""
        inf = self.config.inference
        diameter = nucleus_diameter(prompts["foreground"], prompts["points"]) if inf.nucleus_diameter else None
        if diameter is None:
            return float(self.config.segmentor.scale)
        return float(np.clip(inf.nucleus_diameter / diameter, *inf.scale_range))

    # ---- one file holds the config and both models
    def save(self, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Save config and weights (optionally cast to `dtype`, e.g. bf16 to halve the size) atomically."""
        from promptsam.io.atomic import atomic_path

        def cast(sd: dict) -> dict:
            return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in sd.items()
                    if not k.startswith(UNUSED_SEGMENTOR_KEYS)}

        payload = {
            "format": "promptsam.promptnucseg/1",
            "config": to_dict(self.config),
            **{part: cast(getattr(self, part).state_dict()) for part in self.parts},
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "auto") -> PromptNucSeg:
        """Load a model saved by `save`, with one-line errors for anything else."""
        path = Path(path)
        payload = _read_model_file(path)
        config = from_dict(PromptNucSegConfig, payload["config"], where=str(path))
        model = cls(_without_weights(config))
        for part in model.parts:
            if part not in payload:
                raise CheckpointError(f"{path}: no {part} weights in the file, which its config needs")
            state = {k: v.float() if v.is_floating_point() else v for k, v in payload[part].items()}
            # the unused keys are never saved: they keep their initial values so loading stays strict
            _load_keeping(getattr(model, part), state, keep=UNUSED_SEGMENTOR_KEYS if part == "segmentor" else (),
                          source=f"{path} [{part}]")
        return model.to(pick_device(device)).eval()


def _read_model_file(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """The payload of a PromptNucSeg model file, or one clear line naming the file (`mmap`: tensors stay on disk)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such model file") from None
    except Exception as err:
        detail = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not a readable promptsam model ({detail})") from None
    if not isinstance(payload, dict) or payload.get("format") != "promptsam.promptnucseg/1":
        raise CheckpointError(f"{path}: not a promptsam PromptNucSeg model file")
    return payload


#: [A] What a run that starts from a trained model changes in the model's stored training settings (before the
#: user's overrides): the papers' fine-tuning rate (AdamW 1e-4, §3.5) for every network instead of the from-scratch
#: rates the stored ones may be, annealed to 0 (cosine) over 40 epochs of 64 crops, validated every 5 epochs (the best
#: checkpoint of each stage is kept), at most 30 minutes per stage. Not tuned: chosen, then measured once each on
#: MoNuSeg and CoNSeP (docs/benchmarks.md, session 17). `train --from`'s help and the README quote these values.
FINE_TUNING: dict[str, Any] = {
    "prompter.lr": 1e-4, "segmentor.lr": 1e-4, "training.lr_schedule": "cosine", "training.max_epochs": 40,
    "training.samples_per_epoch": 64, "training.val_every": 5, "training.max_minutes": 30.0,
}


def config_of_model(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PromptNucSegConfig:
    """The config of a run that fine-tunes a PromptNucSeg model file: its stored settings (paths of external weights
    dropped) with `FINE_TUNING`'s training settings, then `overrides`."""
    from promptsam.config import apply_overrides

    stored = to_dict(_without_weights(from_dict(PromptNucSegConfig, _read_model_file(Path(path), mmap=True)["config"],
                                                where=str(path))))
    return from_dict(PromptNucSegConfig, apply_overrides(apply_overrides(stored, FINE_TUNING), overrides),
                     where=str(path))


def _without_weights(config: PromptNucSegConfig) -> PromptNucSegConfig:
    """The same config with external weight paths dropped (weights come from the model file instead)."""
    from dataclasses import replace

    return replace(config, prompter=replace(config.prompter, backbone_weights=None),
                   segmentor=replace(config.segmentor, checkpoint=None))


# -------------------------------------------------------------------------------------------------- training
def _to_tensor_images(samples: list[dict]) -> torch.Tensor:
    images = np.stack([s["image"] for s in samples]).astype(np.float32)
    return normalize_images(torch.from_numpy(images).permute(0, 3, 1, 2))


class PrompterCollate:
    """Batch of augmented crops -> normalised images and per-image point/class/mask targets."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        return collate_prompter(samples, use_classes=self.num_classes > 1)


def collate_prompter(samples: list[dict], *, use_classes: bool = False) -> dict[str, Any]:
    """Batch of augmented crops -> normalised images and per-image point/class/mask targets."""
    targets = []
    for s in samples:
        pts, cls = nucleus_points(s["label"], s.get("classes") if use_classes else None)
        targets.append({
            "points": torch.from_numpy(pts).float(),
            "classes": torch.from_numpy(cls).long() - 1,  # prompter classes are 0-based, background last
            "mask": torch.from_numpy(s["label"] > 0).float(),
        })
    return {"images": _to_tensor_images(samples), "targets": targets}


class SegmentorCollate:
    """Batch of augmented crops -> images and the concatenated point prompts of all crops (with image_index)."""

    def __init__(self, num_objects: int, num_negatives: int, seed: int = 0, point_jitter: float | None = None,
                 duplicate_share: float = 0.0, own_share: float = 0.0) -> None:
        self.num_objects, self.num_negatives, self.point_jitter = num_objects, num_negatives, point_jitter
        self.duplicate_share, self.own_share = duplicate_share, own_share
        self.rng = np.random.default_rng(seed)

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        parts = [sample_point_prompts(s["label"], num_objects=self.num_objects, num_negatives=self.num_negatives,
                                      rng=self.rng, point_jitter=self.point_jitter,
                                      duplicate_share=self.duplicate_share, prompted=s.get("prompts"),
                                      prompted_share=self.own_share) for s in samples]
        index = np.concatenate([np.full(len(p["coords"]), i) for i, p in enumerate(parts)])
        return {
            "images": _to_tensor_images(samples),
            "coords": torch.from_numpy(np.concatenate([p["coords"] for p in parts])),
            "point_labels": torch.from_numpy(np.concatenate([p["point_labels"] for p in parts])),
            "masks": torch.from_numpy(np.concatenate([p["masks"] for p in parts])),
            "image_index": torch.from_numpy(index).long(),
        }


class CentringCollate:
    """Batch of augmented crops -> crops centred on jittered nucleus centroids (`centres`, (x, y) pixels of their
    image) and the `offsets` from each centre to its true centroid."""

    def __init__(self, crop: int, per_image: int = 16, seed: int = 0) -> None:
        self.crop, self.per_image = crop, per_image
        self.rng = np.random.default_rng(seed)

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        crops, offsets, centres = [], [], []
        for s in samples:
            label = s["label"]
            centroids, _ = nucleus_points(label, None)
            if len(centroids) == 0:
                continue
            ids = np.unique(label)
            diameters = 2.0 * np.sqrt(np.bincount(label.ravel())[ids[ids > 0]] / np.pi)
            pick = self.rng.permutation(len(centroids))[: self.per_image]
            points = jittered_points(centroids[pick], diameters[pick], self.rng)
            h, w = label.shape
            points = np.clip(points, 0, [w - 1, h - 1])
            image = torch.from_numpy(np.ascontiguousarray(s["image"])).permute(2, 0, 1).float()
            crops.append(centre_crops(image, points, self.crop))
            centres.append(torch.from_numpy(np.round(points).astype(np.float32)))
            offsets.append(torch.from_numpy(centroids[pick].astype(np.float32)) - centres[-1])
        if not crops:
            return {"crops": torch.zeros(0, 3, self.crop, self.crop), "offsets": torch.zeros(0, 2),
                    "centres": torch.zeros(0, 2)}
        return {"crops": torch.cat(crops), "offsets": torch.cat(offsets), "centres": torch.cat(centres)}


class _Task(L.LightningModule):
    """Shared optimiser set-up and validation bookkeeping of the training stages."""

    def __init__(self, config: PromptNucSegConfig, model: PromptNucSeg) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self._val_rows: list[dict[str, float]] = []

    def configure_optimizers(self):
        lr, wd = self._lr_wd()
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        return with_lr_schedule(optimizer, self.config.training.lr_schedule, self)

    def on_validation_epoch_start(self) -> None:
        self._val_rows = []

    def on_validation_epoch_end(self) -> None:
        if not self._val_rows:
            return
        for key in self._val_rows[0]:
            values = [r[key] for r in self._val_rows if np.isfinite(r[key])]
            if values:
                self.log(f"val/{key}", float(np.mean(values)), prog_bar=key in ("pq", "f1"))


class PrompterTask(_Task):
    """Trains the point prompter: Hungarian-matched classification + regression + auxiliary mask loss."""

    def __init__(self, config: PromptNucSegConfig, model: PromptNucSeg) -> None:
        super().__init__(config, model)
        model.prompter.requires_grad_(True)
        model.segmentor.requires_grad_(False)

    def _lr_wd(self) -> tuple[float, float]:
        return self.config.prompter.lr, self.config.prompter.weight_decay

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        cfg = self.config.prompter
        outputs = self.model.prompter(batch["images"])
        losses = prompter_loss({k: v.float() for k, v in outputs.items()}, batch["targets"], alpha=cfg.alpha,
                               beta=cfg.beta, gamma=cfg.gamma)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False, batch_size=len(batch["targets"]))
        return losses["loss"]

    def validation_step(self, sample: dict, batch_idx: int) -> None:
        image = to_rgb255(sample["image"])
        gt_points, _ = nucleus_points(sample["label"], None)
        pred = self.model.find_prompts(image)
        scores = detection_scores(gt_points, pred["points"], pred_scores=pred["scores"], radius=12.0)
        self._val_rows.append({"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"]})


class CentringTask(_Task):
    """Trains the point centring CNN [A] (models.centring) alone: smooth-L1 on the offset to the true centroid."""

    def __init__(self, config: PromptNucSegConfig, model: PromptNucSeg) -> None:
        super().__init__(config, model)
        model.requires_grad_(False)
        model.centring.requires_grad_(True)

    def _lr_wd(self) -> tuple[float, float]:
        return 1e-3, self.config.prompter.weight_decay  # [A] from scratch, as the prompter

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if len(batch["crops"]) == 0:
            return None
        loss = F.smooth_l1_loss(self.model.centring(batch["crops"]).float(), batch["offsets"])
        self.log("train/loss", loss, batch_size=len(batch["crops"]))
        return loss

    def validation_step(self, sample: dict, batch_idx: int) -> None:
        """The prompter's points after centring: detection F1, the median distance of matched points to their true
        centroids, and the share of nuclei with a point within 3 px of the centroid (monitored)."""
        image = to_rgb255(sample["image"])
        gt_points, _ = nucleus_points(sample["label"], None)
        pred = self.model.find_prompts(image)
        match = match_points(gt_points, pred["points"], pred_scores=pred["scores"], radius=12.0)
        distance = np.linalg.norm(gt_points[match.gt_index] - pred["points"][match.pred_index], axis=1)
        scores = detection_scores(gt_points, pred["points"], pred_scores=pred["scores"], radius=12.0)
        self._val_rows.append({
            "f1": scores["f1"],
            "distance": float(np.median(distance)) if len(distance) else np.nan,  # px, matched points
            "within3": float(np.sum(distance <= 3.0) / len(gt_points)) if len(gt_points) else np.nan,  # recall at 3 px
        })


class SegmentorTask(_Task):
    """Trains the SAM segmentor on point prompts with the prompt encoder frozen (§3.3)."""

    def __init__(self, config: PromptNucSegConfig, model: PromptNucSeg) -> None:
        super().__init__(config, model)
        model.prompter.requires_grad_(False)
        sam = model.segmentor
        if config.segmentor.peft == "lora":  # only the adapters train in the encoder
            for name, param in sam.image_encoder.named_parameters():
                param.requires_grad_("lora_" in name)
        else:
            sam.image_encoder.requires_grad_(True)
        sam.mask_decoder.requires_grad_(True)
        sam.prompt_encoder.requires_grad_(False)  # frozen, as in the paper

    def _lr_wd(self) -> tuple[float, float]:
        return self.config.segmentor.lr, self.config.segmentor.weight_decay

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        sam = self.model.segmentor
        embeddings = sam.embed_images(batch["images"])
        low, iou = sam.decode(embeddings, points=(batch["coords"], batch["point_labels"]),
                              image_index=batch["image_index"], image_details=sam.embed_details(batch["images"]))
        size = batch["images"].shape[-1]
        logits = F.interpolate(low.float(), (size, size), mode="bilinear", align_corners=False)[:, 0]
        losses = segmentor_loss(logits, batch["masks"], iou[:, 0], focal_weight=self.config.segmentor.focal_weight)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(batch["images"]))
        return losses["loss"]

    def validation_step(self, sample: dict, batch_idx: int) -> None:
        """The segmentor on GT nucleus points (or, with segmentor.own_points, on the prompter's), scored with
        PQ/AJI/Dice against the GT instances."""
        points = None if self.config.segmentor.own_points > 0 else nucleus_points(sample["label"], None)[0]
        result = self.model.segment(sample["image"], points=points)
        scores = score_instances(sample["label"], result.labels)
        self._val_rows.append({k: scores[k] for k in ("pq", "aji", "dice", "dq", "sq")})


def train_promptnucseg(
    config: PromptNucSegConfig,
    data: list[str],
    val: list[str],
    out: str | os.PathLike,
    *,
    stages: tuple[str, ...] = ("prompter", "segmentor"),
    progress: bool = True,
    start_from: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train the prompter and/or the segmentor into run folder `out`, then export `out/model.pt`.

    A new run folder can start from the trained model file `start_from` (fine-tuning; `config_of_model` gives its
    settings): its weights become the run's `model.pt`. With another number of nucleus classes than that model's,
    the prompter's class head starts anew and everything else is kept.
    """
    from promptsam.data.transforms import training_transforms
    from promptsam.training import CropDataset, fit_stage, gather_samples, load_task_weights

    out = Path(out)
    L.seed_everything(config.training.seed, workers=True)
    train_samples, val_samples, folder_of = gather_samples(data, val)
    model = PromptNucSeg(config)
    model_file = out / "model.pt"
    summary: dict[str, Any] = {"train_images": len(train_samples), "val_images": len(val_samples)}
    if start_from is not None and not model_file.is_file():
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(model_file) as tmp:
            shutil.copyfile(start_from, tmp)
        summary["started_from"] = str(start_from)
    if model_file.is_file():  # later stages start from the weights of earlier ones
        previous = PromptNucSeg.load(model_file, device="cpu")
        prompter_state = previous.prompter.state_dict()
        new_head = previous.config.prompter.num_classes != config.prompter.num_classes
        if new_head:  # fine-tuning to other nucleus types: a fresh class head, the rest as trained
            prompter_state = {k: v for k, v in prompter_state.items() if not k.startswith("cls_head.")}
            summary["class_head"] = (f"new: {previous.config.prompter.num_classes} -> {config.prompter.num_classes}"
                                     " classes")
        _load_keeping(model.prompter, prompter_state, keep=("cls_head.",) if new_head else (),
                      source=f"{model_file} [prompter]")
        segmentor_state = previous.segmentor.state_dict()
        if config.segmentor.peft and not previous.config.segmentor.peft:
            segmentor_state = onto_lora(segmentor_state, model.segmentor)
        # this run may have grown a zero-start refiner since (segmentor.refine): it keeps its initial values
        _load_keeping(model.segmentor, segmentor_state, keep=("refine.",), source=f"{model_file} [segmentor]")
        if model.centring is not None and previous.centring is not None:
            model.centring.load_state_dict(previous.centring.state_dict())
        if new_head:  # every stage (also one running beside this in another process) now reads the same shapes
            model.save(model_file)
    tcfg = config.training
    for stage in stages:
        if stage == "prompter":
            task = PrompterTask(config, model)
            crop, batch, monitor = config.prompter.crop, config.prompter.batch_size, "val/f1"
            collate = PrompterCollate(config.prompter.num_classes)
            clip = config.prompter.grad_clip
        elif stage == "centring":
            if model.centring is None:
                raise InputError("the centring stage needs prompter.centring=true in the config")
            task = CentringTask(config, model)
            crop, batch, monitor, clip = config.prompter.crop, config.prompter.batch_size, "val/within3", None
            collate = CentringCollate(model.centring.crop, seed=tcfg.seed)
        else:
            task = SegmentorTask(config, model)
            crop, batch, monitor, clip = config.segmentor.image_size, config.segmentor.batch_size, "val/pq", None
            jitter = config.segmentor.point_jitter
            collate = SegmentorCollate(config.segmentor.num_objects, config.segmentor.num_negatives, tcfg.seed,
                                       None if jitter is None else jitter * config.segmentor.scale,
                                       config.segmentor.duplicate_negatives, config.segmentor.own_points)
        zoom = config.segmentor.scale if stage == "segmentor" else 1.0
        augment = {"stain": config.segmentor.stain_augment} if stage == "segmentor" else {
            "scale": tuple(config.prompter.scale_augment), "scale_p": config.prompter.scale_augment_p,
            "stain": config.prompter.stain_augment}
        train_ds = CropDataset(train_samples, training_transforms(crop, zoom=zoom, seed=tcfg.seed, **augment),
                               length=tcfg.samples_per_epoch, seed=tcfg.seed,
                               groups=folder_of if tcfg.balance_datasets else None)
        if stage == "segmentor" and config.segmentor.own_points > 0:
            _attach_own_points(model, train_ds.items, out / stage / "own_points.npz", progress=progress)
        best = fit_stage(task, train_ds, val_samples, collate=collate, batch_size=batch, stage_dir=out / stage,
                         monitor=monitor, max_epochs=tcfg.max_epochs, max_minutes=tcfg.max_minutes,
                         val_every=tcfg.val_every, precision=tcfg.precision, grad_clip=clip, progress=progress,
                         ema_decay=tcfg.ema_decay)
        load_task_weights(task, best)
        _save_stage(model, stage, model_file)
        summary[stage] = {"checkpoint": str(best) if best else None}
    return summary


def _attach_own_points(model: PromptNucSeg, items: list[dict], cache: Path, *, progress: bool = True) -> None:
    """Give every training item a "prompts" map of the points the model's prompter finds on the whole image
    (data.sampling.prompt_map); the points are found once and kept in `cache` for a resumed run."""
    stored = dict(np.load(cache)) if cache.is_file() else {}
    keys = [hashlib.sha1(item["image"].tobytes()).hexdigest()[:20] for item in items]
    missing = [i for i, key in enumerate(keys) if key not in stored]
    if missing:
        was_training = model.training
        model.eval()
        for i in tqdm(missing, desc="prompter points on training images", disable=not progress):
            stored[keys[i]] = model.find_prompts(items[i]["image"])["points"].astype(np.float32)
        model.train(was_training)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **stored)
    for item, key in zip(items, keys, strict=True):
        item["prompts"] = prompt_map(item["label"], stored[key])


def _load_keeping(module: nn.Module, state: dict, *, keep: tuple[str, ...], source: str) -> None:
    """Load `state` into `module` strictly, except that keys starting with `keep` which `state` lacks keep the
    module's own values; otherwise one clear error naming `source` and the first mismatching keys."""
    state = dict(state)
    state.update({k: v for k, v in module.state_dict().items() if k.startswith(keep) and k not in state})
    check_state_dict(module, state, source=source)
    module.load_state_dict(state, strict=True)


def _save_stage(model: PromptNucSeg, stage: str, model_file: Path) -> None:
    """Write `model_file` with this run's config and this stage's weights, the other parts' weights taken from the
    file as it is now on disk (so the stages can train concurrently, in separate processes, into one run folder)."""
    if model_file.is_file():
        on_disk = PromptNucSeg.load(model_file, device="cpu")
        for other in set(model.parts) & set(on_disk.parts) - {stage}:
            getattr(model, other).load_state_dict(getattr(on_disk, other).state_dict())
    model.save(model_file)
