"""M-SAM (MICCAI 2024): 3D lesions with SAM-Med3D, a Mask-Enhanced Adapter and iterative click refinement.

The pipeline, as in the paper's figure (methods.md §5.1):

    volume -> SAM-Med3D protocol (1.5 mm, z-score, 128³ region of interest)        data/volumes.py
           -> LoRA-tuned encoder: image embedding E_I, once per region             models/msam.py
           -> for t = 1..T: a click (ground truth: evaluation; detector mask: automatic; user file: interactive)
                            prompt encoder (click, previous low-res logits -> E_M)
                            MEA(E_I, E_M) -> mask decoder -> logits              inference/clicks.py
           -> paste back onto the input's grid and affine -> NIfTI mask

promptsam adds the automatic mode none of the 3D SAMs have: a small 3D U-Net (models/detector3d.py) maps the whole
volume to a lesion map; each group of its components becomes a region of interest, and M-SAM refines the detector's
mask (its probability is the first round's mask prompt, [A]) with the same click simulator the paper uses against the
ground truth. Training may score each click round against the lesions clicked so far (`clicks.target: lesion`, [A])
instead of the whole mask, so that on multi-lesion volumes the clicks carry information, and may paint each click
into the mask prompt as well as feeding its token (`network.click_radius`, [A]): trained from scratch, M-SAM
ignores the position of a click given as a token only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset

from promptsam.config import from_dict, load_preset, to_dict
from promptsam.data.lesion_augment import lesion_region_transforms
from promptsam.data.volumes import (
    crop_or_pad,
    normalize_intensity,
    paste,
    resample,
    resample_to,
    roi_center,
    sliding_window_predict,
)
from promptsam.device import autocast, pick_device, resolve_precision
from promptsam.errors import CheckpointError, InputError
from promptsam.inference.clicks import (
    LOGIT_THRESHOLD,
    clicked_lesions,
    first_clicks,
    first_lesion_clicks,
    lesion_components,
    next_clicks,
)
from promptsam.io.volumes import Volume, read_pair, read_volume
from promptsam.losses.volume import click_rounds_loss, dice_ce_loss
from promptsam.metrics.semantic import dice
from promptsam.metrics.volume import remove_small_lesions
from promptsam.models.detector3d import build_lesion_detector
from promptsam.models.mea import MaskEnhancedAdapter
from promptsam.models.msam import MSam
from promptsam.models.sam3d.build import build_sam3d
from promptsam.training import TrainingConfig, precision_name, with_lr_schedule

FORMAT = "promptsam.msam/1"


# -------------------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class NetworkConfig:
    """The M-SAM network: SAM-Med3D (or a smaller registered size), LoRA and the MEA."""

    arch: str = "sam_med3d"
    checkpoint: str | None = None  # sam_med3d_turbo.pth; None = from scratch
    lora_rank: int = 4  # 0 = no LoRA: the whole encoder trains (only sensible from scratch)
    mea_heads: int = 6
    # [A] > 0: each click is also painted into the mask prompt (+/- CLICK_LOGIT on a ball of this radius, input
    # voxels), which a from-scratch model learns to follow; 0 = the paper (click token only)
    click_radius: float = 0.0
    # [A] a stride-4 branch that reads the volume and each round's mask prompt (painted clicks included) and adds to
    # the decoder's upscaled embedding (models/sam3d/detail.py); False = the paper
    detail: bool = False


@dataclass(frozen=True)
class VolumeConfig:
    """SAM-Med3D's data protocol (§2)."""

    modality: str = "MR"  # "CT" clamps to [-1000, 1000] first
    spacing: float = 1.5
    size: int = 128
    min_foreground: int = 1000  # training crops with fewer lesion voxels are re-drawn (M-SAM: 1000)
    jitter: int = 0  # [A] random shift (voxels) of the GT-centred training crop; 0 = the official centring
    # [A] training regions: "roi" centres them on the whole mask's bounding box (official); "lesion" on a uniformly
    # drawn lesion (26-connected component), so that one volume gives regions around each of its lesions
    crop_centre: str = "roi"
    permute_axes: bool = False  # [A] random axis order of training regions (the 1.5 mm grid is isotropic)
    intensity_augment: bool = False  # [A] intensity scale / shift / noise on training regions
    synthetic_lesions: int = 0  # [A] up to this many bright synthetic lesions painted into each training region


@dataclass(frozen=True)
class ClickConfig:
    """Interactive refinement (§5.1, §5.5): rounds in training / evaluation and which rounds the loss sees."""

    train_rounds: int = 11  # the released code
    test_rounds: int = 10  # the paper's evaluation
    loss_rounds: str = "all"  # "all": summed over rounds (code); "last": last round only (rebuttal)
    auto_rounds: int = 3  # [A] automatic mode: refinement rounds against the detector's mask
    # training target: "all" the whole mask (paper); "lesion" [A] the union of the GT's 26-connected components hit
    # by the positive clicks so far, the first click on a uniformly drawn lesion. Evaluation is the paper's.
    target: str = "all"
    # [A] share of training regions whose first mask prompt is a simulated detector map (`detector_like_prompt`) instead
    # of zeros, so M-SAM learns to refine the map the automatic mode gives it; 0 = the paper
    detector_prompt_share: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with M-SAM's parameter groups and step schedule (§5.3)."""

    batch_size: int = 2
    lr_encoder: float = 8e-4  # LoRA (or the whole encoder from scratch)
    lr_prompt: float = 8e-5
    lr_decoder: float = 8e-5
    lr_adapter: float = 8e-4
    weight_decay: float = 0.1
    milestones: tuple[int, ...] = (120, 180)
    gamma: float = 0.1


@dataclass(frozen=True)
class DetectorConfig:
    """promptsam's lesion detector for the automatic mode (our design)."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    patch: int = 96
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    threshold: float = 0.5  # on the detector's probability
    min_voxels: int = 3  # components smaller than this (at 1.5 mm) are ignored


@dataclass(frozen=True)
class MSAMConfig:
    """Everything that defines an M-SAM model and its training."""

    name: str = "msam"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    clicks: ClickConfig = field(default_factory=ClickConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


def load_config(preset: str | os.PathLike, overrides: dict[str, Any] | None = None) -> MSAMConfig:
    """Config of a preset name (`msam_paper`, `msam_cpu`) or YAML file, with dotted overrides."""
    return load_preset(MSAMConfig, preset, overrides)


# ---------------------------------------------------------------------------------------------------------- model
@dataclass
class LesionSegmentation:
    """Result on one volume: the mask on the input grid, and what produced it."""

    mask: np.ndarray  # (D, H, W) uint8 on the input's grid
    probability: np.ndarray  # (D, H, W) float32 M-SAM probability on the input's grid
    regions: list[dict[str, Any]]  # per region of interest: centre (input voxels), clicks used


def build_network(cfg: NetworkConfig) -> MSam:
    """SAM-Med3D of `cfg.arch` (official weights when `cfg.checkpoint` is set) with LoRA and the MEA."""
    sam = build_sam3d(cfg.arch, checkpoint=cfg.checkpoint)
    channels = sam.prompt_encoder.embed_dim
    grid = sam.prompt_encoder.image_embedding_size[0]
    adapter = MaskEnhancedAdapter(channels, num_heads=cfg.mea_heads, grid=grid)
    return MSam(sam, lora_rank=cfg.lora_rank, adapter=adapter, click_radius=cfg.click_radius, detail=cfg.detail)


class MSAM(nn.Module):
    """M-SAM network + lesion detector: evaluation with simulated clicks, interactive clicks, or fully automatic."""

    def __init__(self, config: MSAMConfig) -> None:
        super().__init__()
        self.config = config
        self.network = build_network(config.network)
        d = config.detector
        self.detector = build_lesion_detector(channels=d.channels, strides=d.strides)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- the refinement loop shared by training, evaluation and the automatic mode
    def refine(self, volumes: torch.Tensor, reference: torch.Tensor | None, *, rounds: int,
               generator: torch.Generator | None = None, clicks: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
               mask_prompt: torch.Tensor | None = None, components: torch.Tensor | None = None,
               record: list | None = None) -> list[torch.Tensor]:
        """Per-round logits (B, 1, S, S, S) of `rounds` rounds on z-normalised (B, 1, S, S, S) regions.

        Clicks are given (`clicks`: one (coords (B, 1, 3), labels (B, 1)) pair per round) or come from `reference`
        (B, S, S, S) with the paper's simulator, the first one drawn uniformly over the reference's lesion `components`
        when they are given (training with per-lesion targets, [A]); `record` receives the clicks.
        The previous round's low-res logits are the mask prompt; `mask_prompt` (B, 1, s, s, s low-res logits)
        replaces the first round's zeros.
        """
        embeddings, details = self.network.embed(volumes), self.network.embed_details(volumes)
        size = volumes.shape[-3:]
        outputs, previous, logits = [], mask_prompt, None
        for t in range(rounds):
            if clicks is not None:
                coords, labels = clicks[t]
            elif t == 0 and components is not None:
                coords, labels = first_lesion_clicks(components, generator=generator)
            elif t == 0:
                coords, labels = first_clicks(reference, generator=generator)
            else:
                coords, labels = next_clicks(logits[:, 0], reference, generator=generator)
            if record is not None:
                record.append((coords, labels))
            low, _ = self.network.refine(embeddings, coords.to(volumes.device), labels.to(volumes.device), previous,
                                         details)
            logits = F.interpolate(low.float(), size=size, mode="trilinear", align_corners=False)
            outputs.append(logits)
            previous = low.detach()  # [A] fed back without gradient through earlier rounds (bounded memory)
        return outputs

    # ---- whole volumes
    def _grid(self, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
        """The volume on the 1.5 mm grid (raw intensities) and that grid's affine."""
        return resample(volume.array, volume.affine, spacing=self.config.volume.spacing)

    @torch.inference_mode()
    def lesion_probability(self, grid_image: np.ndarray) -> np.ndarray:
        """Detector probability over a whole volume on the 1.5 mm grid (sliding 128³ windows, gaussian blending)."""
        norm = normalize_intensity(grid_image, modality=self.config.volume.modality)
        dtype = resolve_precision(precision_name(self.config.training.precision), self.device)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, dtype):
                return torch.sigmoid(self.detector(x).float())

        return sliding_window_predict(norm, predict, roi_size=self.config.volume.size, overlap=0.25,
                                      device=self.device)

    def detector_prompt(self, probability: np.ndarray) -> torch.Tensor:
        """[A] The detector's probability on a region (S, S, S) as the first mask prompt: (1, 1, s, s, s) logits.

        Max-pooled to the low-res grid (a detected lesion, however small, stays in the prompt) and turned into logits
        shifted so the detector's threshold lands on the official logit cut, like a previous round's logits.
        """
        p = torch.from_numpy(np.ascontiguousarray(probability, np.float32))[None, None]
        p = F.adaptive_max_pool3d(p, self.network.low_res_size).clamp(1e-3, 1 - 1e-3)
        shift = LOGIT_THRESHOLD - float(np.log(self.config.detector.threshold / (1 - self.config.detector.threshold)))
        return (torch.logit(p) + shift).to(self.device)

    def detector_like_prompt(self, components: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """[A] A detector-like first mask prompt (1, 1, s, s, s) from a region's lesions (S, S, S) for training.

        `components` labels the ground truth's lesions (`clicks.lesion_components`); each is kept with probability 0.7
        and the kept ones are blurred (sigma 0.5-2 voxels), so small lesions fade below the threshold as they do in
        the detector's map; then `detector_prompt`.
        """
        n = int(components.max())
        kept = np.isin(components, 1 + np.flatnonzero(rng.random(n) < 0.7)).astype(np.float32)
        return self.detector_prompt(ndimage.gaussian_filter(kept, sigma=rng.uniform(0.5, 2.0)))

    def _regions(self, lesions: np.ndarray) -> list[tuple[float, float, float]]:
        """Centres of 128³ regions covering every component of a lesion mask (greedy, largest first)."""
        labels, n = ndimage.label(lesions)
        if n == 0:
            return []
        sizes = ndimage.sum_labels(lesions, labels, index=np.arange(1, n + 1))
        boxes = ndimage.find_objects(labels)
        half = self.config.volume.size // 2
        centres: list[tuple[float, float, float]] = []
        covered = np.zeros(n, bool)
        for k in np.argsort(-sizes):
            if covered[k]:
                continue
            c = tuple((s.start + s.stop - 1) / 2.0 for s in boxes[k])
            centres.append(c)
            for j, box in enumerate(boxes):  # every component wholly inside this region is covered
                inside = all(s.start >= round(ci) - half and s.stop <= round(ci) + half for s, ci in
                             zip(box, c, strict=True))
                covered[j] |= inside
        return centres

    @torch.inference_mode()
    def segment(self, volume: Volume, *, clicks: list[dict] | None = None, reference: np.ndarray | None = None,
                rounds: int | None = None, seed: int = 0) -> LesionSegmentation:
        """Segment the lesions of a volume: automatic (detector), interactive (`clicks`) or evaluation (`reference`).

        `clicks`: [{"x", "y", "z" (voxel indices along the file's axes 0, 1, 2), "label": 1 | 0}, ...], fed one per
        round; `reference`: a ground-truth mask on the input grid, clicks simulated from it as in the paper (the
        region is centred on its bounding box, as SAM-Med3D and M-SAM evaluate).
        """
        vcfg = self.config.volume
        grid_image, grid_affine = self._grid(volume)
        to_grid = np.linalg.inv(grid_affine) @ volume.affine  # input voxel -> 1.5 mm grid voxel
        generator = torch.Generator().manual_seed(seed)
        if reference is not None:
            grid_ref = resample_to(np.asarray(reference, np.uint8), volume.affine, target_affine=grid_affine,
                                   target_shape=grid_image.shape, mode="nearest") > 0
            centres, mode = ([roi_center(grid_ref)] if grid_ref.any() else []), "evaluation"
            rounds = rounds or self.config.clicks.test_rounds
        elif clicks:
            user = np.array([[c["x"], c["y"], c["z"], 1.0] for c in clicks], np.float64) @ to_grid.T
            centres, mode = [tuple(user[0, :3])], "interactive"
            rounds = len(clicks)
        else:
            grid_prob = self.lesion_probability(grid_image)
            grid_ref = grid_prob > self.config.detector.threshold
            # components as `_regions` labels them (scipy's default, 6-connected)
            grid_ref = remove_small_lesions(grid_ref, min_voxels=self.config.detector.min_voxels, connectivity=6)
            centres, mode = self._regions(grid_ref), "automatic"
            rounds = rounds or self.config.clicks.auto_rounds
        probability = np.zeros(grid_image.shape, np.float32)
        regions = []
        dtype = resolve_precision(precision_name(self.config.training.precision), self.device)
        for centre in centres:
            patch, crop = crop_or_pad(grid_image, centre, size=vcfg.size)
            x = torch.from_numpy(normalize_intensity(patch, modality=vcfg.modality))[None, None].to(self.device)
            given, ref, prompt = None, None, None
            if mode == "automatic":  # M-SAM refines the detector's mask instead of starting from nothing
                prompt = self.detector_prompt(crop_or_pad(grid_prob, centre, size=vcfg.size)[0])
            if mode == "interactive":
                offset = np.array(crop.start, np.float64)
                given = [(torch.tensor(np.round(user[i, :3] - offset), dtype=torch.float32).view(1, 1, 3),
                          torch.tensor([[int(clicks[i]["label"])]])) for i in range(rounds)]
            else:
                ref = torch.from_numpy(crop_or_pad(grid_ref, centre, size=vcfg.size)[0])[None]
            with autocast(self.device, dtype):
                logits = self.refine(x, ref, rounds=rounds, generator=generator, clicks=given, mask_prompt=prompt)[-1]
            prob = torch.sigmoid(logits[0, 0].float() - LOGIT_THRESHOLD).cpu().numpy()  # 0.5 at the official cut
            probability = np.maximum(probability, paste(prob, crop))
            regions.append({"centre_input_voxels": _to_input(centre, to_grid), "rounds": rounds, "mode": mode})
        back = resample_to(probability, grid_affine, target_affine=volume.affine, target_shape=volume.array.shape,
                           mode="bilinear")
        return LesionSegmentation(mask=(back > 0.5).astype(np.uint8), probability=back, regions=regions)

    # ---- one file holds the config and both networks
    def save(self, path: str | os.PathLike) -> Path:
        """Write config + weights to one torch file (atomic)."""
        from promptsam.io.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save({"format": FORMAT, "config": to_dict(self.config), "state_dict": self.state_dict()}, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "auto") -> MSAM:
        """Load a model saved by `save`."""
        path = Path(path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line error
            raise CheckpointError(f"{path}: not a readable promptsam model file ({type(err).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not an M-SAM model file (expected format {FORMAT})")
        config = from_dict(MSAMConfig, _without_weights(data["config"]), where=str(path))
        model = cls(config)
        model.load_state_dict(data["state_dict"])
        return model.to(pick_device(device)).eval()


def _without_weights(config: dict) -> dict:
    """A saved config with the SAM-Med3D checkpoint path removed (the weights are in the file)."""
    config = json.loads(json.dumps(config))
    config.get("network", {})["checkpoint"] = None
    return config


def _to_input(centre: tuple[float, ...], to_grid: np.ndarray) -> list[float]:
    """Grid voxel coordinates -> input voxel coordinates."""
    back = np.linalg.inv(to_grid) @ np.array([*centre, 1.0])
    return [round(float(v), 1) for v in back[:3]]


# ------------------------------------------------------------------------------------------------------- training
class LesionCase:
    """One training or validation volume on the 1.5 mm grid, held in memory.

    A plain class, not a dataclass: Lightning walks dataclass batches to move them and refuses frozen members.
    """

    def __init__(self, name: str, image: np.ndarray, grid_affine: np.ndarray, label: np.ndarray, volume: Volume,
                 reference: np.ndarray):
        self.name = name
        self.image = image  # raw intensities on the 1.5 mm grid
        self.grid_affine = grid_affine  # that grid's affine
        self.label = label  # bool on the 1.5 mm grid
        self.volume = volume  # the input as read (for scoring on the input grid)
        self.reference = reference  # the label on the input grid


def load_cases(samples: list, *, spacing: float) -> list[LesionCase]:
    """Read and resample image/label pairs (checked: geometry, NaNs, empty labels)."""
    out = []
    for s in samples:
        image, label = read_pair(s.image, s.label)
        grid, grid_affine = resample(image.array, image.affine, spacing=spacing)
        grid_label, _ = resample(label.array.astype(np.uint8), label.affine, spacing=spacing, mode="nearest")
        out.append(LesionCase(s.name, grid, grid_affine, grid_label > 0, image, label.array > 0))
    return out


def _flipped_pair(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Image and label flipped together along each axis with probability 0.5, as (1, D, H, W) tensors."""
    for axis in range(3):
        if rng.random() < 0.5:
            image, label = np.flip(image, axis), np.flip(label, axis)
    return {"image": torch.from_numpy(image.copy())[None], "label": torch.from_numpy(label.copy())[None]}


class RegionCrops(Dataset):
    """Random 128³ training regions centred on each case's lesions (the official crop), with flips.

    [A] options of `VolumeConfig`: centred on one lesion instead of all of them, axis permutations, intensity jitter
    and synthetic lesions (`data.lesion_augment`); with none of them set, exactly the official crop and flips.
    """

    def __init__(self, cases: list[LesionCase], cfg: VolumeConfig, *, length: int, seed: int) -> None:
        if cfg.crop_centre not in ("roi", "lesion"):
            raise ValueError(f"volume.crop_centre must be 'roi' or 'lesion', got {cfg.crop_centre!r}")
        self.cases, self.cfg, self.length = cases, cfg, length
        self.rng = np.random.default_rng(seed)
        self.augment = None
        if cfg.permute_axes or cfg.intensity_augment or cfg.synthetic_lesions:
            self.augment = lesion_region_transforms(permute=cfg.permute_axes, intensity=cfg.intensity_augment,
                                                    synthetic_lesions=cfg.synthetic_lesions, seed=seed + 1)
        self.lesion_centres = [_lesion_centres(c.label) for c in cases] if cfg.crop_centre == "lesion" else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        for _ in range(20):  # the official loader re-draws samples with too little foreground
            k = self.rng.integers(len(self.cases))
            case = self.cases[k]
            if self.lesion_centres is None:
                base = np.array(roi_center(case.label))
            else:
                base = self.lesion_centres[k][self.rng.integers(len(self.lesion_centres[k]))]
            centre = base + self.rng.integers(-cfg.jitter, cfg.jitter + 1, 3)
            label = crop_or_pad(case.label, centre, size=cfg.size)[0]
            if label.sum() >= cfg.min_foreground:
                break
        raw = crop_or_pad(case.image, centre, size=cfg.size)[0]
        image = normalize_intensity(raw, modality=cfg.modality)
        if self.augment is None:
            return _flipped_pair(image, label, self.rng)
        sample = self.augment({"image": image, "label": label, "brain": raw > 0})
        return {"image": torch.from_numpy(sample["image"])[None], "label": torch.from_numpy(sample["label"])[None]}


def _lesion_centres(label: np.ndarray) -> np.ndarray:
    """Centres (n, 3) of the bounding boxes of a mask's 26-connected components."""
    components, _ = ndimage.label(label, structure=np.ones((3, 3, 3), bool))
    return np.array([[(s.start + s.stop - 1) / 2.0 for s in box] for box in ndimage.find_objects(components)])


class DetectorPatches(Dataset):
    """Random detector training patches from whole z-normalised volumes; half of them centred on a lesion voxel."""

    def __init__(self, cases: list[LesionCase], cfg: MSAMConfig, *, length: int, seed: int) -> None:
        self.images = [normalize_intensity(c.image, modality=cfg.volume.modality) for c in cases]
        self.labels = [c.label for c in cases]
        self.lesion_voxels = [np.argwhere(c.label) for c in cases]
        self.patch, self.length = cfg.detector.patch, length
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k = self.rng.integers(len(self.images))
        if self.rng.random() < 0.5 and len(self.lesion_voxels[k]):
            centre = self.lesion_voxels[k][self.rng.integers(len(self.lesion_voxels[k]))]
        else:
            centre = [self.rng.integers(s) for s in self.images[k].shape]
        image = crop_or_pad(self.images[k], centre, size=self.patch, fill=float(self.images[k].min()))[0]
        label = crop_or_pad(self.labels[k], centre, size=self.patch)[0]
        return _flipped_pair(image, label, self.rng)


class _Task(L.LightningModule):
    """Shared validation: Dice of the model's mode on each validation volume, on the input grid."""

    def __init__(self, config: MSAMConfig, model: MSAM) -> None:
        super().__init__()
        self.config, self.model = config, model
        self._val: list[float] = []

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def on_validation_epoch_end(self) -> None:
        if self._val:
            self.log("val/dice", float(np.mean(self._val)), prog_bar=True)


class SegmentorTask(_Task):
    """Trains M-SAM with simulated clicks (§5.3): LoRA (or the whole encoder), prompt encoder, MEA, decoder."""

    def __init__(self, config: MSAMConfig, model: MSAM) -> None:
        super().__init__(config, model)
        model.detector.requires_grad_(False)
        net = model.network
        net.requires_grad_(True)
        if config.network.lora_rank > 0:
            for name, p in net.sam.image_encoder.named_parameters():
                p.requires_grad_("lora_" in name)
        self.loss = dice_ce_loss()
        self.generator = torch.Generator().manual_seed(config.training.seed)
        self.rng = np.random.default_rng(config.training.seed)
        if config.clicks.target not in ("all", "lesion"):
            raise ValueError(f"clicks.target must be 'all' or 'lesion', got {config.clicks.target!r}")

    def configure_optimizers(self):
        o, net = self.config.optim, self.model.network
        groups = [
            {"params": [p for p in net.sam.image_encoder.parameters() if p.requires_grad], "lr": o.lr_encoder},
            {"params": list(net.sam.prompt_encoder.parameters()), "lr": o.lr_prompt},
            {"params": list(net.sam.mask_decoder.parameters()), "lr": o.lr_decoder},
            {"params": list(net.mea.parameters()), "lr": o.lr_adapter},
        ]
        if net.detail is not None:  # [A] new layers, trained like the adapter
            groups.append({"params": list(net.detail.parameters()), "lr": o.lr_adapter})
        opt = torch.optim.AdamW(groups, weight_decay=o.weight_decay)
        if self.config.training.lr_schedule != "constant":  # in place of the paper's steps
            return with_lr_schedule(opt, self.config.training.lr_schedule, self)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(o.milestones), gamma=o.gamma)
        return {"optimizer": opt, "lr_scheduler": sched}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        label = batch["label"].bool()
        components, clicks, target = None, [], label
        if self.config.clicks.target == "lesion":  # [A] first click on a random lesion; targets: the lesions clicked
            components = lesion_components(label[:, 0]).to(label.device)
        prompt = None
        if self.rng.random() < self.config.clicks.detector_prompt_share:  # [A] as the automatic mode starts
            lesions = components if components is not None else lesion_components(label[:, 0])
            prompt = torch.cat([self.model.detector_like_prompt(item.cpu().numpy(), self.rng) for item in lesions])
        logits = self.model.refine(batch["image"], label[:, 0], rounds=self.config.clicks.train_rounds,
                                   generator=self.generator, components=components, record=clicks,
                                   mask_prompt=prompt)
        if self.config.clicks.target == "lesion":
            target = [t[:, None].to(label.device) for t in clicked_lesions(components, clicks)]
        loss = click_rounds_loss(logits, target, rounds=self.config.clicks.loss_rounds, loss=self.loss)
        last = dice((target[-1] if isinstance(target, list) else target).cpu().numpy(),
                    (logits[-1] > LOGIT_THRESHOLD).cpu().numpy())
        self.log_dict({"train/loss": loss, "train/dice_last": last}, batch_size=len(label))
        return loss

    def validation_step(self, case: LesionCase, batch_idx: int) -> None:
        """Evaluation mode: clicks simulated from the ground truth, Dice after the last round on the input grid."""
        result = self.model.segment(case.volume, reference=case.reference, seed=batch_idx)
        self._val.append(dice(case.reference, result.mask))


class DetectorTask(_Task):
    """Trains the lesion detector on random patches (Dice + BCE)."""

    def __init__(self, config: MSAMConfig, model: MSAM) -> None:
        super().__init__(config, model)
        model.network.requires_grad_(False)
        model.detector.requires_grad_(True)
        self.loss = dice_ce_loss()

    def configure_optimizers(self):
        d = self.config.detector
        optimizer = torch.optim.AdamW(self.model.detector.parameters(), lr=d.lr, weight_decay=d.weight_decay)
        return with_lr_schedule(optimizer, self.config.training.lr_schedule, self)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self.model.detector(batch["image"]).float(), batch["label"].float())
        self.log("train/loss", loss, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, case: LesionCase, batch_idx: int) -> None:
        """Detector alone: Dice of its thresholded map on the input grid."""
        prob = self.model.lesion_probability(case.image)
        back = resample_to(prob, case.grid_affine, target_affine=case.volume.affine, target_shape=case.reference.shape,
                           mode="bilinear")
        self._val.append(dice(case.reference, back > self.config.detector.threshold))


def train_msam(config: MSAMConfig, data: list[str], val: list[str], out: str | os.PathLike, *,
               stages: tuple[str, ...] = ("detector", "segmentor"), progress: bool = True,
               detector_from: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train the detector and/or M-SAM into run folder `out`, then export `out/model.pt`.

    A new run folder can take its lesion detector from the model file `detector_from` (the M-SAM network then starts
    fresh from `config`); a run folder holding a model.pt resumes from it.
    """
    from promptsam.data.volumes import list_volume_cases
    from promptsam.training import fit_stage, load_task_weights

    out = Path(out)
    L.seed_everything(config.training.seed, workers=True)
    train_samples, val_samples = [], []
    for folder in data:
        try:
            train_samples += list_volume_cases(folder, subset=None if val else "train")
            val_samples += [] if val else list_volume_cases(folder, subset="val")
        except InputError:
            if val:
                raise
            train_samples += list_volume_cases(folder)  # no frozen split for this dataset: all of it trains
    for folder in val:
        val_samples += list_volume_cases(folder)
    if not train_samples:
        raise InputError(f"no training volumes found in {', '.join(map(str, data))}")
    spacing = config.volume.spacing
    train_cases, val_cases = load_cases(train_samples, spacing=spacing), load_cases(val_samples, spacing=spacing)
    model = MSAM(config)
    model_file = out / "model.pt"
    if model_file.is_file():  # later stages start from the weights of earlier ones
        model.load_state_dict(MSAM.load(model_file, device="cpu").state_dict())
    elif detector_from is not None:
        model.detector.load_state_dict(MSAM.load(detector_from, device="cpu").detector.state_dict())
    t = config.training
    summary: dict[str, Any] = {"train": [c.name for c in train_cases], "val": [c.name for c in val_cases]}
    for stage in stages:
        if stage == "detector":
            task = DetectorTask(config, model)
            ds = DetectorPatches(train_cases, config, length=t.samples_per_epoch or len(train_cases), seed=t.seed)
            batch = config.detector.batch_size
        elif stage == "segmentor":
            task = SegmentorTask(config, model)
            ds = RegionCrops(train_cases, config.volume, length=t.samples_per_epoch or len(train_cases), seed=t.seed)
            batch = config.optim.batch_size
        else:
            raise ValueError(f"unknown stage {stage!r}; use 'detector' or 'segmentor'")
        best = fit_stage(task, ds, val_cases, collate=None, batch_size=batch, stage_dir=out / stage,
                         monitor="val/dice", max_epochs=t.max_epochs, max_minutes=t.max_minutes,
                         val_every=t.val_every, precision=t.precision, progress=progress, whole=list)
        load_task_weights(task, best)
        _save_stage(model, stage, model_file)
        summary[stage] = {"checkpoint": str(best) if best else None}
    return summary


def _save_stage(model: MSAM, stage: str, model_file: Path) -> None:
    """Write `model_file` with this run's config and this stage's network, the other one from the file on disk."""
    other = "network" if stage == "detector" else "detector"
    if model_file.is_file():
        getattr(model, other).load_state_dict(getattr(MSAM.load(model_file, device="cpu"), other).state_dict())
    model.save(model_file)


def read_clicks(path: str | os.PathLike) -> list[dict]:
    """Clicks of the interactive mode from a JSON file: [{"x", "y", "z", "label"}, ...] in input voxel indices."""
    path = Path(path)
    try:
        clicks = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable clicks file ({type(err).__name__})") from None
    if isinstance(clicks, dict):
        clicks = clicks.get("clicks", [])
    ok = isinstance(clicks, list) and clicks and all(
        isinstance(c, dict) and {"x", "y", "z"} <= set(c) and c.get("label", 1) in (0, 1) for c in clicks)
    if not ok:
        raise InputError(f'{path}: expected a list of {{"x", "y", "z", "label": 1|0}} clicks')
    if int(clicks[0].get("label", 1)) != 1:
        raise InputError(f"{path}: the first click must be positive (label 1)")
    return [{**c, "label": int(c.get("label", 1))} for c in clicks]


__all__ = ["MSAM", "LesionSegmentation", "MSAMConfig", "load_config", "read_clicks", "read_volume", "train_msam"]
