"""Training plumbing shared by the methods: data assembly, in-memory crop datasets and a Lightning run folder.

A run folder holds one sub-folder per stage (`prompter/`, `segmentor/`, ...) with Lightning checkpoints
(`checkpoints/best.ckpt`, `checkpoints/last.ckpt`), `logs/version_N/metrics.csv` and TensorBoard events under
`tb/version_N` (one version per start); re-running the same command resumes from `last.ckpt`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from promptsam.data.layout import NucleusDataset, Sample, list_samples
from promptsam.data.splits import VAL
from promptsam.device import PRECISIONS, auto_precision, pick_device
from promptsam.errors import InputError, PromptSAMError


@dataclass(frozen=True)
class TrainingConfig:
    """How long and how often, per training stage (each method's preset sets its own values)."""

    max_epochs: int = 200
    max_minutes: float | None = None
    val_every: int = 5
    samples_per_epoch: int | None = None  # None = one random sample per training case and epoch
    precision: str = "auto"  # auto (bf16-mixed on bf16 hardware, else 32), fp32, bf16, or a Lightning flag
    seed: int = 2024
    ema_decay: float | None = None  # validate, keep and ship an exponential moving average of the weights (0.999)
    # [A] "constant" (the papers' prompter and segmentor), "cosine": the learning rate falls to 0 along a half cosine
    # over the run's max_epochs (counted from its start; a resumed run continues the curve), per optimiser step
    lr_schedule: str = "constant"
    # [A] draw training crops so that every --data folder gets the same share (within a folder ~ sqrt(image area));
    # False: ~ sqrt(area) over all images pooled, so folders of large images dominate
    balance_datasets: bool = False

    def __post_init__(self) -> None:
        _check_lr_schedule(self.lr_schedule)
        if self.precision not in PRECISIONS and self.precision not in LIGHTNING_PRECISIONS:
            raise PromptSAMError(f"training.precision={self.precision!r}: must be one of "
                                 f"{', '.join([*PRECISIONS, *LIGHTNING_PRECISIONS])}")


LR_SCHEDULES = ("constant", "cosine")


def _check_lr_schedule(schedule: str) -> str:
    """`schedule` if it is one of LR_SCHEDULES, else one clear error."""
    if schedule not in LR_SCHEDULES:
        raise PromptSAMError(f"training.lr_schedule={schedule!r}: must be one of {', '.join(LR_SCHEDULES)}")
    return schedule


def with_lr_schedule(optimizer: torch.optim.Optimizer, schedule: str, task: L.LightningModule) -> Any:
    """What `task`'s configure_optimizers returns: `optimizer` alone ("constant") or with a per-step cosine decay to
    0 over the steps its Trainer plans (max_epochs; "cosine"; Lightning saves and resumes its position)."""
    if _check_lr_schedule(schedule) == "constant":
        return optimizer
    total_steps = task.trainer.estimated_stepping_batches
    if not np.isfinite(total_steps) or total_steps < 1:
        raise PromptSAMError("training.lr_schedule=cosine needs a finite number of steps: set training.max_epochs")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(total_steps), eta_min=0.0)
    rank_zero_info(f"learning rate: cosine to 0 over {int(total_steps)} steps (training.max_epochs); a time limit "
                   "that stops training earlier leaves it above 0")
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# the Lightning flags promptsam's precision names (device.PRECISIONS, as inference.precision) stand for ("auto" is
# resolved on the machine at hand); Lightning's own flags are accepted as they are
LIGHTNING_NAMES = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
LIGHTNING_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true")


def gather_samples(data: Sequence[str | os.PathLike], val: Sequence[str | os.PathLike] = ()) -> tuple[
        list[Sample], list[Sample], list[int]]:
    """Training and validation cases, and for each training case the index of its `data` folder: every `data`
    folder's train split, minus the frozen validation cases of known development datasets (promptsam.data.splits)
    when no `val` folders are given."""
    train: list[Sample] = []
    held: list[Sample] = []
    folder_of: list[int] = []
    for i, folder in enumerate(data):
        samples = list_samples(folder, "train")
        frozen = set(VAL.get(Path(folder).name, ())) if not val else set()
        kept = [s for s in samples if s.name not in frozen]
        train += kept
        folder_of += [i] * len(kept)
        held += [s for s in samples if s.name in frozen]
    for folder in val:
        held += list_samples(folder, "val") if (Path(folder) / "val").is_dir() else list_samples(folder, "train")
    if not train:
        raise InputError(f"no training images found in {', '.join(map(str, data))}")
    return train, held, folder_of


class CropDataset(Dataset):
    """Random augmented crops of images held in memory; images are drawn with weight ~ sqrt(area) per epoch, and with
    `groups` (a key per sample) each group gets the same share."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[dict], dict], *, length: int | None = None,
                 seed: int = 0, groups: Sequence[Any] | None = None) -> None:
        source = NucleusDataset(list(samples))
        self.items = [source[i] for i in range(len(source))]
        areas = np.array([it["image"].shape[0] * it["image"].shape[1] for it in self.items], np.float64)
        self.weights = np.sqrt(areas / 65536.0)
        if groups is not None:
            keys = np.asarray(groups)
            for key in np.unique(keys):
                self.weights[keys == key] /= self.weights[keys == key].sum()
        self.weights /= self.weights.sum()
        self.length = length or len(self.items)
        self.transform = transform
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[self.rng.choice(len(self.items), p=self.weights)]
        return self.transform({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in item.items()})


class _Whole(Dataset):
    """Validation images, whole, one per step."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.source = NucleusDataset(list(samples))
        self.cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        if i not in self.cache:
            self.cache[i] = self.source[i]
        return self.cache[i]


def precision_name(precision: str) -> str:
    """promptsam's name (device.PRECISIONS) for a training precision given either way (a Lightning flag or a name),
    for inference with the precision the model was trained in."""
    names = {flag: name for name, flag in LIGHTNING_NAMES.items()} | {"64-true": "fp32"}  # fp64 runs as fp32
    return names.get(precision, precision)


def lightning_precision(precision: str) -> str:
    """Lightning precision flag: for `auto`, the autocast dtype promptsam.device picks here; fp32 / bf16 as
    Lightning names them; a Lightning flag as given."""
    if precision == "auto":
        precision = auto_precision(pick_device("auto"))
    return LIGHTNING_NAMES.get(precision, precision)


def fit_stage(
    task: L.LightningModule,
    train: Dataset,
    val: Sequence[Sample],
    *,
    collate: Callable[[list], Any],
    batch_size: int,
    stage_dir: str | os.PathLike,
    monitor: str,
    max_epochs: int,
    max_minutes: float | None = None,
    val_every: int = 5,
    precision: str = "auto",
    grad_clip: float | None = None,
    progress: bool = True,
    whole: Callable[[Sequence], Dataset] | None = None,
    ema_decay: float | None = None,
) -> Path | None:
    """Train `task` into `stage_dir` (resuming from its last.ckpt) and return the best checkpoint's path.

    Validation items are `whole(val)[i]`, one per step: by default 2D samples read whole (and cached). With
    `ema_decay`, Lightning's EMAWeightAveraging keeps a moving average of the weights: validation scores it, the
    checkpoints hold it (the raw weights as "current_model_state"), and a run without one resumes from its weights.
    """
    stage_dir = Path(stage_dir)
    ckpt_dir = stage_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="max",
                                 save_top_k=1 if val else 0)
    # Lightning's save_last writes last.ckpt only when the best improves, so a stopped run would resume from its
    # best epoch and repeat the rest: the resume point is a checkpoint of its own, written after every epoch.
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, every_n_epochs=1,
                             save_on_train_epoch_end=True, enable_version_counter=False)
    trainer = L.Trainer(
        default_root_dir=stage_dir,
        accelerator="auto",
        devices=1,
        precision=lightning_precision(precision),
        max_epochs=max_epochs,
        max_time={"minutes": max_minutes} if max_minutes else None,
        check_val_every_n_epoch=val_every,
        num_sanity_val_steps=0,
        gradient_clip_val=grad_clip,
        callbacks=[checkpoint, latest] + ([EMAWeightAveraging(decay=ema_decay)] if ema_decay else []),
        # one version folder per (re)start, so resuming never overwrites earlier metrics
        logger=[CSVLogger(stage_dir, name="logs"), TensorBoardLogger(stage_dir, name="tb")],
        log_every_n_steps=5,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=0)
    val_loader = DataLoader((whole or _Whole)(val), batch_size=None, num_workers=0) if val else None
    last = ckpt_dir / "last.ckpt"
    trainer.fit(task, train_loader, val_loader, ckpt_path=str(last) if last.is_file() else None)
    trainer.save_checkpoint(last)  # a time limit stops mid-epoch, after the last per-epoch save: keep the final state
    best = ckpt_dir / "best.ckpt"
    if val and last.is_file():
        # a time limit usually stops training between validations: score the final weights too, keep the better
        final = trainer.validate(task, val_loader, verbose=False)[0].get(monitor)
        best_score = checkpoint.best_model_score
        if best_score is None or (final is not None and final >= float(best_score)):
            return last
    return best if best.is_file() else (last if last.is_file() else None)


def load_task_weights(task: L.LightningModule, checkpoint: str | os.PathLike | None) -> None:
    """Load the weights of a Lightning checkpoint into `task` (no-op for None)."""
    if checkpoint is None:
        return
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    task.load_state_dict(state, strict=True)
