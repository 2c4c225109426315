"""Training plumbing: the run folder's resume point follows the latest epoch, not the best one."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

from promptsam.errors import PromptSAMError
from promptsam.training import TrainingConfig, fit_stage, with_lr_schedule


class Worsening(L.LightningModule):
    """A toy task whose validation score only gets worse, so the best checkpoint stays at the first epoch."""

    def __init__(self, killed_at_epoch: int | None = None, schedule: str = "constant") -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.killed_at_epoch = killed_at_epoch
        self.schedule = schedule

    def training_step(self, batch, batch_idx):
        if self.current_epoch == self.killed_at_epoch:
            raise RuntimeError("killed")  # the process dies: fit_stage's final save never happens
        return (self.w - 1.0).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", -float(self.current_epoch), batch_size=1)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return with_lr_schedule(optimizer, self.schedule, self)


def test_last_checkpoint_is_the_latest_epoch_and_resume_continues(tmp_path):
    data = TensorDataset(torch.zeros(4, 1))
    args = dict(collate=lambda b: b, batch_size=2, stage_dir=tmp_path, monitor="val/score", val_every=1,
                precision="32-true", progress=False, whole=lambda val: TensorDataset(torch.zeros(1, 1)))
    with pytest.raises(RuntimeError, match="killed"):
        fit_stage(Worsening(killed_at_epoch=3), data, [object()], max_epochs=5, **args)
    ckpts = tmp_path / "checkpoints"
    assert torch.load(ckpts / "best.ckpt", weights_only=False)["epoch"] == 0
    # 3 finished epochs x 2 steps: the resume point is the last finished epoch, not the best one
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 6
    best = fit_stage(Worsening(), data, [object()], max_epochs=4, **args)  # resumes: one more epoch, not four
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 8
    assert best == ckpts / "best.ckpt"


def test_cosine_schedule_falls_to_zero_over_max_epochs_and_resumes_on_the_curve(tmp_path):
    data = TensorDataset(torch.zeros(4, 1))
    args = dict(collate=lambda b: b, batch_size=2, stage_dir=tmp_path, monitor="val/score", val_every=1,
                precision="32-true", progress=False, whole=lambda val: TensorDataset(torch.zeros(1, 1)))
    with pytest.raises(RuntimeError, match="killed"):  # 4 epochs x 2 steps planned, stopped after 2 epochs
        fit_stage(Worsening(killed_at_epoch=2, schedule="cosine"), data, [object()], max_epochs=4, **args)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.05)  # half way: 0.1 * 0.5
    task = Worsening(schedule="cosine")
    fit_stage(task, data, [object()], max_epochs=4, **args)  # the resumed run continues the curve to 0
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 8
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    constant = Worsening()
    fit_stage(constant, data, [object()], max_epochs=2, **{**args, "stage_dir": tmp_path / "constant"})
    assert constant.optimizers().param_groups[0]["lr"] == 0.1


def test_unknown_lr_schedule_is_refused():
    with pytest.raises(PromptSAMError, match="training.lr_schedule='linear'"):
        TrainingConfig(lr_schedule="linear")
    task = Worsening()
    task.trainer = type("Unbounded", (), {"estimated_stepping_batches": float("inf")})()
    with pytest.raises(PromptSAMError, match="max_epochs"):
        with_lr_schedule(torch.optim.SGD(task.parameters(), lr=0.1), "cosine", task)


def test_ema_checkpoints_hold_the_average_and_the_raw_weights(tmp_path):
    data = TensorDataset(torch.zeros(4, 1))
    args = dict(collate=lambda b: b, batch_size=2, stage_dir=tmp_path, monitor="val/score", val_every=1,
                precision="32-true", progress=False, whole=lambda val: TensorDataset(torch.zeros(1, 1)))
    task = Worsening()
    fit_stage(task, data, [object()], max_epochs=3, ema_decay=0.5, **args)
    saved = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    raw, average = saved["current_model_state"]["w"].item(), saved["state_dict"]["w"].item()
    # SGD pulls w from 0 towards 1; the average lags behind the raw weights
    assert 0.0 < average < raw < 1.0
    assert task.w.item() == pytest.approx(torch.load(tmp_path / "checkpoints" / "last.ckpt",
                                                     weights_only=False)["state_dict"]["w"].item())


def test_training_transforms_magnify_by_the_configured_scale_range():
    import numpy as np

    from promptsam.data.transforms import training_transforms

    yy, xx = np.mgrid[:40, :40]
    label = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 16).astype(np.int32)
    sample = {"image": np.full((40, 40, 3), 128, np.uint8), "label": label}

    def area(**scale) -> int:
        out = training_transforms(80, seed=0, **scale)({k: v.copy() for k, v in sample.items()})
        return int((out["label"] > 0).sum())

    assert area(scale=(2.0, 2.0), scale_p=1.0) == pytest.approx(4 * label.sum(), rel=0.15)
    assert area(scale=(2.0, 2.0), scale_p=0.0) == label.sum()


def test_stain_jitter_changes_stained_tissue_and_leaves_grey_images_alone(shared_data):
    import numpy as np

    from promptsam.data.splits import split_samples
    from promptsam.data.transforms import StainJitter
    from promptsam.io import read_image

    tissue = read_image(split_samples("monuseg", "train", root=shared_data)[0].image)[:128, :128]
    rng = np.random.default_rng(0)
    jittered = [StainJitter(0.1, p=1.0)({"image": tissue.copy()}, rng)["image"] for _ in range(4)]
    shifts = [np.abs(j.astype(int) - tissue).mean() for j in jittered]
    assert all(1 < s < 40 for s in shifts)  # visibly restained, not washed out
    assert len({round(s, 3) for s in shifts}) == 4  # a new draw each time
    # the same tissue structure: the restained image still tracks the original's brightness
    assert all(np.corrcoef(j.mean(2).ravel(), tissue.mean(2).ravel())[0, 1] > 0.9 for j in jittered)
    grey = np.repeat(tissue.mean(2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert np.array_equal(StainJitter(0.1, p=1.0)({"image": grey.copy()}, rng)["image"], grey)


def test_balanced_crops_give_each_data_folder_the_same_share(tmp_path):
    import numpy as np
    import tifffile

    from promptsam.training import CropDataset, gather_samples

    rng = np.random.default_rng(0)
    folders = []
    for name, n, size in (("big", 2, 128), ("small", 6, 32)):
        for sub in ("images", "labels"):
            (tmp_path / name / "train" / sub).mkdir(parents=True)
        for i in range(n):
            tifffile.imwrite(tmp_path / name / "train" / "images" / f"{name}{i}.tif",
                             rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            labels = np.zeros((size, size), np.uint16)
            labels[4:12, 4:12] = 1
            tifffile.imwrite(tmp_path / name / "train" / "labels" / f"{name}{i}.tif", labels)
        folders.append(tmp_path / name)
    train, _, groups = gather_samples(folders)
    assert sorted(groups) == [0, 0, 1, 1, 1, 1, 1, 1]
    share = lambda ds: [ds.weights[np.array(groups) == g].sum() for g in (0, 1)]  # noqa: E731
    assert share(CropDataset(train, lambda x: x))[0] == pytest.approx(4 / 7)  # sqrt(area): 2 * 128 vs 6 * 32
    assert share(CropDataset(train, lambda x: x, groups=groups)) == pytest.approx([0.5, 0.5])
