"""Point centring [A]: crops centred on points, a CNN that learns where a nucleus's centre is, its training stage
and its place in PromptNucSeg's model file and prompts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from promptsam.errors import CheckpointError
from promptsam.io import read_image, read_labels, write_labels
from promptsam.methods.promptnucseg import CentringCollate, PromptNucSeg, load_config, train_promptnucseg
from promptsam.models.centring import PointCentring, centre_crops, jittered_points

DSB = "2227fd9b01d67c2bcdb407d3205214e6dfeff9fd0725828e3b3651959942ff4a"  # train split, fluorescence


def test_centre_crops_put_the_points_pixel_at_the_centre_and_reflect_at_borders():
    image = torch.zeros(3, 40, 50)
    image[:, 30, 12] = 100.0
    crops = centre_crops(image, np.array([[12.3, 29.8], [0.0, 0.0], [49.0, 39.0]]), 16)
    assert crops.shape == (3, 3, 16, 16)
    assert np.unravel_index(crops[0, 0].argmax().item(), (16, 16)) == (8, 8)
    assert torch.isfinite(crops).all()
    assert torch.allclose(crops.mean((2, 3)), torch.zeros(3, 3), atol=1e-5)  # standardised per crop and channel


def _blobs(rng, n: int, size: int = 32):
    """Crops of one bright disk each, centred near (not on) the disk's centre; targets are the offsets to it."""
    yy, xx = np.mgrid[:64, :64]
    crops, offsets = [], []
    for _ in range(n):
        cx, cy = rng.uniform(24, 40, 2)
        disk = ((xx - cx) ** 2 + (yy - cy) ** 2 < 7.0**2).astype(np.float32) * 200
        point = jittered_points(np.array([[cx, cy]]), np.array([14.0]), rng)
        crops.append(centre_crops(torch.from_numpy(disk)[None].repeat(3, 1, 1), point, size))
        offsets.append(torch.from_numpy((np.array([[cx, cy]]) - np.round(point)).astype(np.float32)))
    return torch.cat(crops), torch.cat(offsets)


def test_centring_learns_where_the_centre_of_a_blob_is():
    torch.manual_seed(0)
    net = PointCentring(crop=32, channels=(8, 16, 16))
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    crops, offsets = _blobs(np.random.default_rng(0), 256)
    test_crops, test_offsets = _blobs(np.random.default_rng(1), 64)
    for step in range(100):
        part = slice(32 * (step % 8), 32 * (step % 8 + 1))
        loss = torch.nn.functional.smooth_l1_loss(net(crops[part]), offsets[part])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        error = (net(test_crops) - test_offsets).norm(dim=1)
    before = test_offsets.norm(dim=1)
    assert error.median() < 0.4 * before.median(), (error.median(), before.median())


def test_eval_forward_with_folded_batchnorm_matches_the_layers():
    torch.manual_seed(0)
    net = PointCentring(crop=32, channels=(8, 16))
    for module in net.modules():  # non-trivial running statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    net.eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        reference = net.head(net.features(x)) * net.scale
    with torch.inference_mode():
        assert torch.allclose(net(x), reference, atol=1e-4)
        assert torch.allclose(net(x), reference, atol=1e-4)  # the cached folded weights


@pytest.fixture(scope="module")
def dsb_crop(shared_data):
    root = shared_data / "dsb2018" / "train"
    return {"image": read_image(root / "images" / f"{DSB}.png")[:128, :128],
            "label": read_labels(root / "labels" / f"{DSB}.tif")[:128, :128]}


def test_collate_offsets_point_from_the_crop_centre_to_the_centroid(dsb_crop):
    from promptsam.data.targets import nucleus_points

    batch = CentringCollate(crop=48, per_image=8, seed=0)([dict(dsb_crop), dict(dsb_crop)])
    assert batch["crops"].shape == (16, 3, 48, 48) and batch["offsets"].shape == (16, 2)
    centroids, _ = nucleus_points(dsb_crop["label"])
    ends = (batch["centres"] + batch["offsets"]).numpy()
    nearest = np.linalg.norm(ends[:, None] - centroids[None], axis=-1).min(1)
    assert nearest.max() < 1e-4  # every crop centre + its offset is a true centroid
    assert (batch["offsets"].norm(dim=1) > 0.5).float().mean() > 0.5  # most centres are off their centroid


def tiny_centring_config():
    return load_config("promptnucseg_cpu", {
        "prompter.backbone": "resnet18", "prompter.fpn_channels": 32, "prompter.num_levels": 2,
        "segmentor.image_size": 128, "inference.precision": "fp32", "prompter.centring": True,
        "training.max_epochs": 1, "training.samples_per_epoch": 4, "training.val_every": 1,
    })


def test_centring_stage_trains_into_the_model_file_and_moves_the_prompts(dsb_crop, tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    (data / "train" / "images").mkdir(parents=True)
    (data / "train" / "labels").mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(dsb_crop["image"]).save(data / "train" / "images" / f"{name}.png")
        write_labels(data / "train" / "labels" / f"{name}.tif", dsb_crop["label"])
    config = tiny_centring_config()
    torch.manual_seed(0)
    run = tmp_path / "run"
    summary = train_promptnucseg(config, [str(data)], [str(data)], run, stages=("centring",), progress=False)
    assert summary["centring"]["checkpoint"]
    model = PromptNucSeg.load(run / "model.pt", device="cpu")
    assert model.centring is not None and model.parts == ("prompter", "segmentor", "centring")

    # the same prompter without centring finds the same points before they are moved
    plain = PromptNucSeg(replace(config, prompter=replace(config.prompter, centring=False))).eval()
    plain.prompter.load_state_dict(model.prompter.state_dict())
    plain.segmentor.load_state_dict(model.segmentor.state_dict())
    moved, found = model.find_prompts(dsb_crop["image"]), plain.find_prompts(dsb_crop["image"])
    if len(found["points"]):
        pixels = torch.from_numpy(dsb_crop["image"]).permute(2, 0, 1).float()
        expected = model.centring.recentre(pixels, found["points"], steps=config.prompter.centring_steps)
        assert len(moved["points"]) <= len(found["points"])
        assert all(np.isclose(expected, p).all(1).any() for p in moved["points"])

    # a file whose config wants centring weights it does not hold fails in one line naming the file
    payload = torch.load(run / "model.pt", weights_only=True)
    del payload["centring"]
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken\.pt: no centring weights"):
        PromptNucSeg.load(tmp_path / "broken.pt", device="cpu")
