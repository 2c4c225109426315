"""M-SAM as a pipeline: training with simulated clicks, the three segmentation modes, the CLI and its errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from promptsam.cli.main import main
from promptsam.errors import InputError
from promptsam.losses.volume import click_rounds_loss
from promptsam.methods.msam import MSAM, load_config, read_clicks, train_msam

TINY = {"training.max_epochs": 1, "training.samples_per_epoch": 2, "training.val_every": 1,
        "training.max_minutes": None, "clicks.train_rounds": 2, "clicks.test_rounds": 2, "clicks.auto_rounds": 1,
        "detector.patch": 48, "detector.channels": [4, 8, 16, 16]}


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    """A tiny M-SAM and detector trained for two steps each on the MS training volume (patient07 held out)."""
    out = tmp_path_factory.mktemp("msam_run")
    cfg = load_config("msam_cpu", TINY)
    summary = train_msam(cfg, [str(shared_data / "ms_lesion_3d")], [], out, progress=False)
    return out, summary


def test_training_respects_the_frozen_split_and_writes_a_loadable_model(trained):
    out, summary = trained
    assert summary["train"] == ["patient19"] and summary["val"] == ["patient07"]
    for stage in ("detector", "segmentor"):
        assert (out / stage / "checkpoints" / "last.ckpt").is_file()
        assert list((out / stage / "logs").glob("version_*/metrics.csv"))
    model = MSAM.load(out / "model.pt", device="cpu")
    assert model.config.network.arch == "sam_med3d_small"


def test_a_new_run_takes_the_detector_of_another_model_and_a_fresh_network(trained, shared_data, tmp_path):
    """`train msam --detector-from MODEL`: e.g. the [A] detail branch trained from scratch beside a trained detector."""
    source = MSAM.load(trained[0] / "model.pt", device="cpu")
    cfg = load_config("msam_cpu", {**TINY, "network.detail": True})
    train_msam(cfg, [str(shared_data / "ms_lesion_3d")], [], tmp_path, stages=("segmentor",), progress=False,
               detector_from=trained[0] / "model.pt")
    model = MSAM.load(tmp_path / "model.pt", device="cpu")
    assert model.network.detail is not None and model.config.network.detail
    for (name, a), b in zip(source.detector.state_dict().items(), model.detector.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_three_modes_return_masks_on_the_input_grid(trained, shared_data):
    from promptsam.io.volumes import read_pair

    model = MSAM.load(trained[0] / "model.pt", device="cpu")
    image, label = read_pair(shared_data / "ms_lesion_3d/train/images/patient07.nii.gz",
                             shared_data / "ms_lesion_3d/train/labels/patient07.nii.gz")
    evaluation = model.segment(image, reference=label.array)
    assert evaluation.mask.shape == image.shape and evaluation.mask.dtype == np.uint8
    assert [r["mode"] for r in evaluation.regions] == ["evaluation"]
    z, y, x = np.argwhere(label.array)[0]
    clicks = [{"x": int(z), "y": int(y), "z": int(x), "label": 1}, {"x": 10, "y": 10, "z": 10, "label": 0}]
    interactive = model.segment(image, clicks=clicks)
    assert interactive.regions[0]["mode"] == "interactive" and interactive.regions[0]["rounds"] == 2
    assert np.allclose(interactive.regions[0]["centre_input_voxels"], [z, y, x], atol=1.0)
    automatic = model.segment(image)
    assert automatic.mask.shape == image.shape
    assert all(r["mode"] == "automatic" for r in automatic.regions)


def test_a_model_trained_at_a_lightning_precision_flag_segments(trained, shared_data):
    """training.precision takes Lightning's flags too ("32-true"); segmenting reads them as promptsam's names."""
    import dataclasses

    from promptsam.io.volumes import read_pair

    model = MSAM.load(trained[0] / "model.pt", device="cpu")
    image, _ = read_pair(shared_data / "ms_lesion_3d/train/images/patient07.nii.gz",
                         shared_data / "ms_lesion_3d/train/labels/patient07.nii.gz")
    masks = []
    for precision in ("fp32", "32-true"):
        model.config = dataclasses.replace(
            model.config, training=dataclasses.replace(model.config.training, precision=precision))
        masks.append(model.segment(image).mask)
    assert np.array_equal(*masks)


def test_refinement_sees_the_previous_round_and_the_loss_covers_the_chosen_rounds():
    cfg = load_config("msam_cpu", TINY)
    torch.manual_seed(0)
    model = MSAM(cfg).eval()
    x = torch.randn(1, 1, 128, 128, 128)
    ref = torch.zeros(1, 128, 128, 128, dtype=torch.bool)
    ref[0, 60:70, 60:70, 60:70] = True
    with torch.no_grad():
        rounds = model.refine(x, ref, rounds=3, generator=torch.Generator().manual_seed(0))
    assert len(rounds) == 3 and rounds[0].shape == (1, 1, 128, 128, 128)
    assert not torch.equal(rounds[0], rounds[1])  # new click and the fed-back mask change the output
    target = ref[:, None]
    all_rounds = click_rounds_loss(rounds, target, rounds="all")
    last = click_rounds_loss(rounds, target, rounds="last")
    assert torch.isclose(all_rounds, sum(click_rounds_loss([r], target) for r in rounds))
    assert torch.isclose(last, click_rounds_loss(rounds[-1:], target))
    with pytest.raises(ValueError, match="rounds"):
        click_rounds_loss(rounds, target, rounds="first")


def test_automatic_mode_starts_from_the_detectors_mask(monkeypatch):
    """[A] automatic mode: the detector's probability is the first round's mask prompt (zeros before)."""
    from promptsam.inference.clicks import LOGIT_THRESHOLD
    from promptsam.io.volumes import Volume

    torch.manual_seed(0)
    model = MSAM(load_config("msam_cpu", TINY)).eval()
    prob = np.zeros((100, 100, 100), np.float32)
    prob[40:46, 50:56, 60:66] = 0.9
    monkeypatch.setattr(model, "lesion_probability", lambda grid: prob)  # the detector, without training one
    prompts = []
    refine = model.network.refine

    def spy(embeddings, coords, labels, previous=None, details=None):
        prompts.append(previous)
        return refine(embeddings, coords, labels, previous, details)

    monkeypatch.setattr(model.network, "refine", spy)
    volume = Volume(np.random.default_rng(0).random((100, 100, 100), np.float32), np.diag([1.5, 1.5, 1.5, 1.0]),
                    (1.5, 1.5, 1.5))
    result = model.segment(volume)
    assert [r["mode"] for r in result.regions] == ["automatic"] and len(prompts) == 1  # auto_rounds 1 in TINY
    first = prompts[0]
    assert first is not None and first.shape == (1, 1, 32, 32, 32)
    assert int((first > LOGIT_THRESHOLD).sum()) > 0 and float(first.min()) < 0  # the lesion, and background
    assert np.isclose(float(model.detector_prompt(np.full((128,) * 3, 0.5, np.float32)).mean()), LOGIT_THRESHOLD)


def test_training_can_start_from_a_detector_like_prompt(monkeypatch):
    """[A] `clicks.detector_prompt_share`: some training regions start from a simulated detector map, as automatic
    mode does; the map covers ground-truth lesions only and drops small ones."""
    import promptsam.methods.msam as msam
    from promptsam.inference.clicks import LOGIT_THRESHOLD, lesion_components

    cfg = load_config("msam_cpu", {**TINY, "clicks.detector_prompt_share": 1.0, "clicks.train_rounds": 1})
    model = MSAM(cfg)
    label = np.zeros((128,) * 3, bool)
    label[30:50, 30:50, 30:50] = True  # a large lesion
    label[100, 100, 100] = True  # a one-voxel lesion
    rng = np.random.default_rng(0)
    components = lesion_components(torch.from_numpy(label)[None])[0].numpy()
    prompts = [model.detector_like_prompt(components, rng) for _ in range(8)]
    assert all(p.shape == (1, 1, 32, 32, 32) for p in prompts)
    on = [(p[0, 0] > LOGIT_THRESHOLD).numpy() for p in prompts]
    assert all(not o[22:, 22:, 22:].any() for o in on)  # the one-voxel lesion never shows
    assert all(not o[:6].any() and not o[14:22].any() for o in on)  # nothing outside the large lesion (+ blur)
    assert any(o[10, 10, 10] for o in on)  # the large lesion is there when kept
    seen = []
    refine = model.refine

    def spy(*args, mask_prompt=None, **kwargs):
        seen.append(mask_prompt)
        return refine(*args, mask_prompt=mask_prompt, **kwargs)

    monkeypatch.setattr(model, "refine", spy)
    task = msam.SegmentorTask(cfg, model)
    task.log_dict = lambda *a, **k: None
    image = torch.randn(1, 1, 128, 128, 128)
    task.training_step({"image": image, "label": torch.from_numpy(label)[None, None]}, 0)
    assert seen and seen[0] is not None and seen[0].shape == (1, 1, 32, 32, 32)


def test_per_lesion_training_scores_rounds_against_the_clicked_lesions(monkeypatch):
    """[A] `clicks.target: lesion` trains each round on the lesions clicked so far; evaluation keeps the binary GT."""
    import promptsam.methods.msam as msam

    cfg = load_config("msam_cpu", {**TINY, "clicks.target": "lesion"})
    task = msam.SegmentorTask(cfg, MSAM(cfg))
    task.log_dict = lambda *a, **k: None
    seen = []
    monkeypatch.setattr(msam, "click_rounds_loss", lambda logits, target, **k: seen.append(target) or
                        sum(x.sum() for x in logits))
    label = torch.zeros(1, 1, 128, 128, 128)
    label[0, 0, 20:30, 20:30, 20:30] = 1
    label[0, 0, 90:100, 90:100, 90:100] = 1
    task.training_step({"image": torch.randn(1, 1, 128, 128, 128), "label": label}, 0)
    targets = seen[0]
    assert len(targets) == 2 and targets[0].shape == label.shape
    assert int(targets[0].sum()) == 1000 and bool((targets[0] <= label.bool()).all())  # one lesion of the two
    with pytest.raises(ValueError, match="clicks.target"):
        msam.SegmentorTask(load_config("msam_cpu", {**TINY, "clicks.target": "one"}), MSAM(cfg))


def test_tiny_msam_overfits_one_region():
    """Loss falls when M-SAM trains on one fixed region with simulated clicks (the training step in miniature)."""
    from promptsam.methods.msam import SegmentorTask

    torch.manual_seed(0)
    cfg = load_config("msam_cpu", TINY)
    task = SegmentorTask(cfg, MSAM(cfg))
    opt = task.configure_optimizers()["optimizer"]
    x = torch.randn(1, 1, 128, 128, 128) * 0.1
    label = torch.zeros(1, 1, 128, 128, 128)
    label[0, 0, 40:80, 50:90, 45:85] = 1
    x = x + 2 * label
    task.log_dict = lambda *a, **k: None
    losses = []
    for _ in range(12):
        loss = task.training_step({"image": x, "label": label}, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_clicks_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "clicks.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="clicks.json: unreadable"):
        read_clicks(bad)
    bad.write_text(json.dumps([{"x": 1, "y": 2}]))
    with pytest.raises(InputError, match="expected a list"):
        read_clicks(bad)
    bad.write_text(json.dumps([{"x": 1, "y": 2, "z": 3, "label": 0}]))
    with pytest.raises(InputError, match="first click must be positive"):
        read_clicks(bad)
    bad.write_text(json.dumps({"clicks": [{"x": 1, "y": 2, "z": 3}]}))
    assert read_clicks(bad) == [{"x": 1, "y": 2, "z": 3, "label": 1}]


def test_segment_cli_writes_mask_with_input_geometry_and_rejects_bad_volumes(trained, tmp_path, capsys):
    affine = np.diag([1.2, 1.0, 2.0, 1.0])
    affine[:3, 3] = [5, -3, 7]
    vol = np.zeros((60, 70, 40), np.float32)
    vol[20:40, 20:50, 10:30] = 100 + np.random.default_rng(0).random((20, 30, 20))
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "case.nii.gz")
    model = str(trained[0] / "model.pt")
    assert main(["segment", str(tmp_path / "case.nii.gz"), "-o", str(tmp_path / "out"), "--model", model]) == 0
    mask = nib.load(tmp_path / "out" / "case.mask.nii.gz")
    assert mask.shape == vol.shape and np.allclose(mask.affine, affine)
    header = (tmp_path / "out" / "case.lesions.csv").read_text().splitlines()[0]
    assert header.startswith("id,voxels,volume_mm3")

    nan = vol.copy()
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, affine), tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    for name in ("nan", "flat"):
        capsys.readouterr()
        code = main(["segment", str(tmp_path / f"{name}.nii.gz"), "-o", str(tmp_path / name), "--model", model])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"{name}.nii.gz" in err[0]
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())

    capsys.readouterr()  # nucleus points are a 2D option: one line, nothing written
    (tmp_path / "pts.csv").write_text("x,y\n1,1\n")
    code = main(["segment", str(tmp_path / "case.nii.gz"), "-o", str(tmp_path / "pts"), "--model", model,
                 "--points", str(tmp_path / "pts.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "pts.csv" in err[0] and "--clicks" in err[0]
    assert not (tmp_path / "pts").exists()
    code = main(["segment", str(tmp_path / "case.nii.gz"), "-o", str(tmp_path / "pts"), "--model", model,
                 "--diameter", "12"])  # so is a nucleus diameter
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--diameter" in err[0] and "2D" in err[0]
    assert not (tmp_path / "pts").exists()
    code = main(["segment", str(tmp_path / "case.nii.gz"), "-o", str(tmp_path / "pts"), "--model", model,
                 "--set", "inference.overlap=32"])  # and segment-time settings
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--set" in err[0] and "2D" in err[0]
    assert not (tmp_path / "pts").exists()
