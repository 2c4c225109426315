"""PromptNucSeg end to end: sampling, tiling, merging, a tiny model that learns, and the segment CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from promptsam.cli.main import main
from promptsam.data.sampling import sample_point_prompts
from promptsam.inference.merge import paint_crops
from promptsam.inference.point_segmentation import Candidates, merge_candidates
from promptsam.inference.prompts import nearest_others, point_prompts
from promptsam.inference.tiling import assign_points, tile, tile_starts
from promptsam.io.images import read_image, read_labels
from promptsam.methods.promptnucseg import (
    PrompterTask,
    PromptNucSeg,
    SegmentorCollate,
    SegmentorTask,
    collate_prompter,
    load_config,
    normalize_images,
)
from promptsam.metrics import score_instances


# ---------------------------------------------------------------------------------------------- building blocks
def test_tile_starts_snap_last_window_to_the_border():
    assert tile_starts(1000, 256, 64) == [0, 192, 384, 576, 744]
    assert tile_starts(200, 256, 64) == [0]
    assert tile_starts(256, 256, 64) == [0]
    assert len(tile((1000, 700), size=256, overlap=64)) == 5 * 4


def test_points_go_to_the_window_where_they_are_most_central():
    corners = tile((512, 512), size=256, overlap=64)  # starts 0, 192, 256 per axis
    owner = assign_points(np.array([[10, 10], [300, 20], [500, 500]], np.float32), corners, 256)
    assert [tuple(corners[o]) for o in owner] == [(0, 0), (0, 192), (256, 256)]


def test_k_nearest_negatives_with_padding():
    pts = np.array([[0, 0], [10, 0], [0, 30], [100, 100]], np.float32)
    assert nearest_others(pts, 2).tolist() == [[1, 2], [0, 2], [0, 1], [2, 1]]
    coords, labels = point_prompts(pts[:2], pts[:2], 2)  # only one other point exists: pad the second
    assert labels.tolist() == [[1, 0, -1], [1, 0, -1]]
    assert coords[0, 1].tolist() == [10, 0] and coords[0, 2].tolist() == [0, 0]


def test_segmentor_sampling_prompts_lie_inside_their_nucleus():
    labels = np.zeros((64, 64), np.uint16)
    labels[5:15, 5:15], labels[30:40, 30:50], labels[50:60, 2:8] = 1, 2, 3
    out = sample_point_prompts(labels, num_objects=2, num_negatives=1, rng=np.random.default_rng(0))
    assert out["coords"].shape == (2, 2, 2) and out["masks"].shape == (2, 64, 64)
    for coords, lab, mask in zip(out["coords"], out["point_labels"], out["masks"], strict=True):
        x, y = coords[0].astype(int)
        assert lab[0] == 1 and mask[y, x]  # positive inside its own nucleus
        nx, ny = coords[1].astype(int)
        assert lab[1] == 0 and labels[ny, nx] > 0 and not mask[ny, nx]  # negative inside another nucleus


def test_segmentor_sampling_near_centre_stays_inside_and_near_the_centroid():
    labels = np.zeros((80, 80), np.uint16)
    labels[5:45, 5:45] = 1
    yy, xx = np.mgrid[:80, :80]
    labels[(yy - 60) ** 2 + (xx - 60) ** 2 < 100] = 2
    labels[(labels == 1) & (yy > 20) & (xx > 20)] = 0  # an L shape: its centroid is not a pixel of it
    rng = np.random.default_rng(0)
    uniform = [sample_point_prompts(labels, num_negatives=1, rng=rng)["coords"] for _ in range(200)]
    near = [sample_point_prompts(labels, num_negatives=1, rng=rng, point_jitter=2.0)["coords"] for _ in range(200)]
    centroid = np.array([np.argwhere(labels == i).mean(0)[::-1] for i in (1, 2)])

    def spread(draws: list[np.ndarray]) -> float:
        pts = np.concatenate([d[:, 0] for d in draws])
        inside = labels[pts[:, 1].astype(int), pts[:, 0].astype(int)] > 0
        assert inside.all()
        return float(np.median(np.linalg.norm(pts - centroid[labels[pts[:, 1].astype(int), pts[:, 0].astype(int)] - 1],
                                              axis=1)))

    assert spread(near) < 0.6 * spread(uniform)


def test_merge_keeps_best_candidate_per_prompt_and_suppresses_overlaps():
    square = np.ones((10, 10), bool)
    cands = Candidates(
        crops=[square, square, square, square[:5]],
        offsets=np.array([[0, 0], [1, 1], [40, 40], [2, 2]]),
        scores=np.array([0.9, 0.8, 0.7, 0.95], np.float32),
        prompt_index=np.array([0, 1, 2, 0]),  # prompt 0 has two candidates: the 0.95 one wins
    )
    labels, painted = merge_candidates(cands, (64, 64), nms_iou=0.3)
    # prompt 1's box overlaps prompt 0's best (IoU > 0.3) and scores lower: suppressed
    assert labels.max() == 2
    assert sorted(cands.prompt_index[painted].tolist()) == [0, 2]
    assert (labels == 1).sum() == 50  # the 5x10 crop of the best candidate, painted first (highest score)


def test_paint_crops_higher_score_wins_overlap():
    a, b = np.ones((4, 4), bool), np.ones((4, 4), bool)
    labels, painted = paint_crops((8, 8), [a, b], np.array([[0, 0], [2, 2]]), np.array([0.2, 0.9]))
    assert labels[3, 3] == 1 and painted.tolist() == [1, 0]
    assert (labels == 2).sum() == 12


def test_largest_pieces_drops_fragments_and_keeps_ids():
    from promptsam.inference.merge import largest_pieces

    labels = np.zeros((10, 12), np.uint32)
    labels[1:5, 1:5] = 3  # body of nucleus 3
    labels[8, 10] = 3  # a stray pixel of it
    labels[6:9, 1:4] = 7  # nucleus 7, cut in two pieces by nucleus 5 painted over it
    labels[7, 1:4] = 5
    labels[2, 8] = 9  # a one-pixel nucleus stays
    out = largest_pieces(labels)
    assert out[8, 10] == 0 and (out == 3).sum() == 16
    assert (out == 7).sum() == 3 and (out[6, 1:4] == 7).all() and (out == 5).sum() == 3
    assert out[2, 8] == 9 and (out > 0).sum() == (labels > 0).sum() - 4


# ------------------------------------------------------------------------------------------------ a tiny model
DSB = ["2227fd9b01d67c2bcdb407d3205214e6dfeff9fd0725828e3b3651959942ff4a",
       "245b995878370ef4ea977568b2b67f93d4ecaa9308761b9d3e148e0803780183"]  # train split, fluorescence


def tiny_config():
    """The CPU preset with a small prompter and SAM windows of 128 px, so a few dozen steps run in CI time."""
    return load_config("promptnucseg_cpu", {
        "prompter.backbone": "resnet18", "prompter.fpn_channels": 32, "prompter.num_levels": 2,
        "segmentor.image_size": 128, "segmentor.lr": 5e-4, "segmentor.focal_weight": 1.0,
        "inference.precision": "fp32",
    })


@pytest.fixture(scope="module")
def crops(shared_data):
    """Two real 128x128 DSB2018 crops (read in place), about 15 nuclei each."""
    root = shared_data / "dsb2018" / "train"
    return [{"image": read_image(root / "images" / f"{n}.png")[:128, :128],
             "label": read_labels(root / "labels" / f"{n}.tif")[:128, :128]} for n in DSB]


def scores(model, crops):
    from promptsam.data.targets import nucleus_points

    out = []
    for crop in crops:
        points, _ = nucleus_points(crop["label"])
        out.append(score_instances(crop["label"], model.segment(crop["image"], points=points).labels))
    return {k: float(np.mean([o[k] for o in out])) for k in ("pq", "dice")}


def train_steps(task, batches, steps: int) -> list[float]:
    """Plain optimisation steps of a training task (no Lightning Trainer needed)."""
    opt = task.configure_optimizers()
    losses = []
    for step in range(steps):
        loss = task.training_step(batches(), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained(crops):
    """A PromptNucSeg trained from scratch on the two crops: segmentor 180 steps, prompter 20 steps, on one thread
    (with two, runs in separate processes diverged: validation Dice 0.39-0.62 after the same seeded steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_tiny(crops)
    finally:
        torch.set_num_threads(threads)


def _train_tiny(crops):
    torch.manual_seed(0)
    config = tiny_config()
    model = PromptNucSeg(config)
    before = scores(model.eval(), crops)
    collate = SegmentorCollate(num_objects=12, num_negatives=1, seed=0)
    losses = train_steps(SegmentorTask(config, model.train()), lambda: collate([dict(c) for c in crops]), 180)
    from dataclasses import replace

    prompter_config = replace(config, prompter=replace(config.prompter, lr=2e-3))
    train_steps(PrompterTask(prompter_config, model.train()), lambda: collate_prompter([dict(c) for c in crops]), 20)
    model.eval()
    return model, losses, before


def test_segmentor_learns_on_real_crops(crops, trained):
    """Loss falls, and with ground-truth points as prompts the masks go from nothing to real nuclei."""
    model, losses, before = trained
    after = scores(model, crops)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert after["dice"] > max(0.5, before["dice"] + 0.15), (before, after)
    assert after["pq"] > before["pq"] + 0.1, (before, after)


def test_model_file_round_trip(trained, tmp_path):
    model, *_ = trained
    from promptsam.methods.promptnucseg import UNUSED_SEGMENTOR_KEYS

    path = model.save(tmp_path / "m.pt")
    again = PromptNucSeg.load(path, device="cpu")
    unused = tuple(f"segmentor.{k}" for k in UNUSED_SEGMENTOR_KEYS)  # TinyViT's ImageNet head: never run, not saved
    saved = torch.load(path, weights_only=True)["segmentor"]
    assert not any(k.startswith(UNUSED_SEGMENTOR_KEYS) for k in saved)
    mine, theirs = model.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        if not key.startswith(unused):
            assert torch.equal(value, theirs[key]), key


def test_clip_to_foreground_keeps_masks_inside_the_prompters_nucleus_mask(trained, crops):
    from dataclasses import replace

    model, *_ = trained
    image = crops[0]["image"]
    plain = model.segment(image)
    model.config = replace(model.config, inference=replace(model.config.inference, clip_to_foreground=True))
    try:
        clipped = model.segment(image)
    finally:
        model.config = replace(model.config, inference=replace(model.config.inference, clip_to_foreground=False))
    foreground = model.find_prompts(image)["foreground"]
    assert foreground.shape == image.shape[:2] and foreground.any()
    assert not (clipped.labels[~foreground] > 0).any()
    assert ((plain.labels > 0) & ~foreground).any()  # the option changed something
    assert clipped.labels.max() == len(clipped.points) == len(clipped.scores)


def test_nucleus_diameter_sets_the_magnification_per_image(trained, crops):
    from dataclasses import replace

    from promptsam.inference.points import nucleus_diameter

    model, *_ = trained
    image = crops[0]["image"]
    prompts = model.find_prompts(image)
    diameter = nucleus_diameter(prompts["foreground"], prompts["points"])
    assert diameter is not None
    plain = model.segment(image)
    assert plain.scale == model.config.segmentor.scale
    inference = model.config.inference
    model.config = replace(model.config, inference=replace(inference, nucleus_diameter=2.0 * diameter,
                                                             scale_range=(0.5, 4.0)))
    try:
        zoomed = model.segment(image)
    finally:
        model.config = replace(model.config, inference=inference)
    assert zoomed.scale == pytest.approx(2.0)
    assert zoomed.labels.shape == image.shape[:2] and zoomed.labels.max() == len(zoomed.points)


def test_given_diameter_sets_the_magnification_instead_of_the_estimate(trained, crops, monkeypatch):
    """diameter= (as Cellpose's): SAM draws at the magnification that brings nuclei of that size to the model's
    target, the same as that fixed scale; with given points too the prompter is not run at all. Nonsense diameters,
    ones beyond the magnifications the model allows, and models without a diameter target fail on one line."""
    from dataclasses import replace

    from promptsam.errors import InputError

    model, *_ = trained
    image, label = crops[0]["image"], crops[0]["label"]
    inference = model.config.inference
    with pytest.raises(InputError, match="takes no nucleus diameter"):  # the tiny model draws at a fixed scale
        model.segment(image, diameter=10)
    model.config = replace(model.config, inference=replace(inference, nucleus_diameter=20.0))
    try:
        given = model.segment(image, diameter=12.5)
        assert given.scale == pytest.approx(1.6)
        assert np.array_equal(given.labels, model.segment(image, scale=1.6).labels) and given.labels.max() > 0
        for bad, match in ((0, "positive"), (-3, "positive"), (float("nan"), "positive"), ("big", "positive"),
                           (1, "outside"), (500, "outside")):
            with pytest.raises(InputError, match=match):
                model.segment(image, diameter=bad)
        from promptsam.data.targets import nucleus_points

        points = nucleus_points(label)[0]
        expected = model.segment(image, points=points, diameter=12.5)
        monkeypatch.setattr(model, "find_prompts", lambda *a, **k: pytest.fail("the prompter ran"))
        again = model.segment(image, points=points, diameter=12.5)
        assert np.array_equal(again.labels, expected.labels) and again.labels.max() > 0
    finally:
        model.config = replace(model.config, inference=inference)


# ---------------------------------------------------------------------------------------------- the segment CLI
def test_segment_cli_writes_five_valid_outputs(trained, crops, tmp_path, shared_data, capsys):
    shapely = pytest.importorskip("shapely.geometry")
    model, *_ = trained
    model_file = model.save(tmp_path / "model.pt")
    from PIL import Image

    image = tmp_path / "dsb_crop.png"
    Image.fromarray(crops[0]["image"]).save(image)
    out = tmp_path / "out"
    assert main(["segment", str(image), "-o", str(out), "--model", str(model_file), "--device", "cpu"]) == 0
    stem = "dsb_crop"
    for suffix in (".labels.tif", ".geojson", ".csv", ".overlay.png"):
        assert (out / f"{stem}{suffix}").is_file(), suffix
    labels = read_labels(out / f"{stem}.labels.tif")
    assert labels.max() > 0  # the geometry checks below are not vacuous
    features = json.loads((out / f"{stem}.geojson").read_text())["features"]
    assert len(features) == labels.max()
    for f in features:
        geom = shapely.shape(f["geometry"])
        assert geom.is_valid and f["properties"]["objectType"] == "detection"
    rows = (out / f"{stem}.csv").read_text().splitlines()
    assert len(rows) == labels.max() + 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_typed_model_writes_class_map_and_classified_geojson(trained, crops, tmp_path):
    """A model with nucleus types: its prompter gives each point a type, and the outputs carry them:
    <stem>.classes.tif (one class per nucleus, background 0), QuPath classifications by name, a class column. The
    trained fixture's nucleus class is split into three types (perturbed copies of its logit row, so nucleus vs
    background is kept); the files are checked on masks drawn from the
    ground-truth points with known types, so the check does not hang on the tiny prompter's recall."""
    import copy
    from dataclasses import replace

    from torch import nn

    from promptsam.cli.segment import write_outputs
    from promptsam.data.targets import nucleus_points

    model, *_ = trained
    typed = copy.deepcopy(model)
    names = ("tumour", "lymphocyte", "stroma")
    typed.config = replace(typed.config, class_names=names, prompter=replace(typed.config.prompter, num_classes=3))
    head = typed.prompter.cls_head[3]  # Linear(c, 2): nucleus, background
    split = nn.Linear(head.in_features, 4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        noise = torch.randn(3, head.in_features, generator=generator) * head.weight[0].abs().mean()
        split.weight.copy_(torch.cat([head.weight[:1] + noise, head.weight[1:]]))
        split.bias.copy_(torch.cat([head.bias[:1].expand(3), head.bias[1:]]))
    typed.prompter.cls_head[3] = split
    typed.prompter.num_classes = 3
    image, label = crops[1]["image"], crops[1]["label"]
    found = typed.find_prompts(image, fast=True)
    assert set(found["classes"].tolist()) <= {1, 2, 3}
    with torch.no_grad():  # the typed head scores three nucleus types and the background at every anchor
        logits = typed.prompter(normalize_images(torch.from_numpy(image[None]).permute(0, 3, 1, 2).float()))["logits"]
    assert logits.shape[-1] == 4

    points, _ = nucleus_points(label)
    untyped = typed.segment(image, points=points)  # points of another tool carry no type: none is made up
    assert untyped.labels.max() > 0 and not untyped.classes.any() and not untyped.point_classes.any()
    types = np.arange(len(points)) % 3 + 1
    result = typed.segment(image, points=points, point_classes=types)
    out = tmp_path / "out"
    write_outputs(out, "crop", image, result)
    labels, classes = read_labels(out / "crop.labels.tif"), read_labels(out / "crop.classes.tif")
    assert labels.max() >= 3 and classes.shape == labels.shape
    assert np.array_equal(classes > 0, labels > 0)
    per_nucleus = {int(i): np.unique(classes[labels == i]) for i in np.unique(labels[labels > 0])}
    assert all(len(c) == 1 and 1 <= c[0] <= 3 for c in per_nucleus.values())
    assert len({int(c[0]) for c in per_nucleus.values()}) >= 2  # the types really differ between nuclei
    features = json.loads((out / "crop.geojson").read_text())["features"]
    for f in features:
        label_id = f["properties"]["measurements"]["Label"]
        assert f["properties"]["classification"]["name"] == names[int(per_nucleus[label_id][0]) - 1]
    header, *rows = (out / "crop.csv").read_text().splitlines()
    assert "class" in header.split(",") and len(rows) == labels.max()

    # the CLI writes the class map of a typed model (here with --fast: one prompter view)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "crop.png")
    cli_out = tmp_path / "cli"
    model_file = typed.save(tmp_path / "typed.pt")
    assert main(["segment", str(tmp_path / "crop.png"), "-o", str(cli_out), "--model", str(model_file), "--fast"]) == 0
    assert read_labels(cli_out / "crop.classes.tif").shape == labels.shape

    # typed points from a file (a class column by name): the same class map as the Python API with those types
    table = tmp_path / "typed_points.csv"
    table.write_text("x,y,class\n" + "".join(f"{x},{y},{names[t - 1]}\n" for (x, y), t in zip(points, types,
                                                                                                strict=True)))
    assert main(["segment", str(tmp_path / "crop.png"), "-o", str(tmp_path / "typed_cli"), "--model",
                 str(model_file), "--points", str(table)]) == 0
    assert np.array_equal(read_labels(tmp_path / "typed_cli" / "crop.classes.tif"), result.classes)


@pytest.mark.parametrize("case", ["unreadable", "rgba", "tiny", "empty"])
def test_segment_cli_bad_inputs_one_line_no_outputs(case, trained, tmp_path, capsys):
    from PIL import Image

    model, *_ = trained
    model_file = model.save(tmp_path / "model.pt")
    bad = tmp_path / f"{case}.png"
    if case == "unreadable":
        bad.write_bytes(b"this is not a png")
    elif case == "rgba":
        rgba = np.zeros((32, 32, 4), np.uint8)
        rgba[..., 3] = 128  # translucent: dropping alpha would change the image
        Image.fromarray(rgba).save(bad)
    elif case == "tiny":
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(bad)
    else:
        bad.write_bytes(b"")
    out = tmp_path / "out"
    code = main(["segment", str(bad), "-o", str(out), "--model", str(model_file), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and str(bad) in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_segment_cli_draws_the_nuclei_of_a_points_file(trained, crops, tmp_path, capsys):
    """--points: SAM draws a nucleus at each given point (here the instances of a label image, as another tool would
    give them), exactly as the Python API does with the same points; a point off the image or one file for two
    images is one clear line and no outputs."""
    from PIL import Image

    from promptsam.data.targets import nucleus_points
    from promptsam.io.images import write_labels

    model, *_ = trained
    model_file = model.save(tmp_path / "model.pt")
    image, label = crops[0]["image"], crops[0]["label"]
    Image.fromarray(image).save(tmp_path / "crop.png")
    seeds = write_labels(tmp_path / "seeds" / "crop.tif", label)
    expected = model.segment(image, points=nucleus_points(label)[0]).labels
    assert expected.max() > 0
    for given in (seeds, seeds.parent):  # the file itself, or a folder of <stem> files
        out = tmp_path / f"out_{given.name}"
        assert main(["segment", str(tmp_path / "crop.png"), "-o", str(out), "--model", str(model_file),
                     "--points", str(given)]) == 0
        assert np.array_equal(read_labels(out / "crop.labels.tif"), expected)

    far = tmp_path / "far.csv"
    far.write_text("x,y\n5,5\n500,5\n")
    Image.fromarray(image).save(tmp_path / "other.png")
    for inputs in ([tmp_path / "crop.png"], [tmp_path / "crop.png", tmp_path / "other.png"]):
        capsys.readouterr()
        out = tmp_path / "bad"
        code = main(["segment", *map(str, inputs), "-o", str(out), "--model", str(model_file), "--points", str(far)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and str(far) in err[0], err
        assert not out.exists() or not any(out.iterdir())


def test_top_level_api_takes_a_diameter_for_images_and_slides(trained, crops, tmp_path):
    """promptsam.segment / segment_slide(diameter=...): the image at the magnification it sets, and every block of a
    large image at that one magnification."""
    from dataclasses import replace

    import promptsam

    model, *_ = trained
    inference = model.config.inference
    model.config = replace(model.config, inference=replace(inference, nucleus_diameter=20.0))
    try:
        model_file = str(model.save(tmp_path / "sized.pt"))
        expected = model.segment(crops[0]["image"], diameter=12.5)
    finally:
        model.config = replace(model.config, inference=inference)
    result = promptsam.segment(crops[0]["image"], model=model_file, device="cpu", diameter=12.5)
    assert result.scale == pytest.approx(1.6) and np.array_equal(result.labels, expected.labels)
    wide = np.concatenate([crops[0]["image"], crops[1]["image"]], axis=1)  # 128 x 256: two blocks of 128
    slide = promptsam.segment_slide(wide, model=model_file, device="cpu", diameter=12.5, block=128, halo=32,
                                    tissue=False)
    assert slide.scale == pytest.approx(1.6) and len(slide.blocks) == 2 and np.asarray(slide.labels).max() > 0


def test_segment_cli_diameter_equals_the_api_and_bad_values_fail_on_one_line(trained, crops, tmp_path, capsys):
    from dataclasses import replace

    from PIL import Image

    model, *_ = trained
    inference = model.config.inference
    model.config = replace(model.config, inference=replace(inference, nucleus_diameter=20.0))
    try:
        model_file = model.save(tmp_path / "model.pt")
        expected = model.segment(crops[0]["image"], diameter=12.5).labels
    finally:
        model.config = replace(model.config, inference=inference)
    Image.fromarray(crops[0]["image"]).save(tmp_path / "crop.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "crop.png"), "-o", str(out), "--model", str(model_file),
                 "--diameter", "12.5"]) == 0
    assert "magnification 1.60" in capsys.readouterr().out
    assert np.array_equal(read_labels(out / "crop.labels.tif"), expected)
    for bad in ("0", "1", "nan"):
        code = main(["segment", str(tmp_path / "crop.png"), "-o", str(tmp_path / "bad"), "--model",
                     str(model_file), "--diameter", bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and "--diameter" in err[0], err
        assert not (tmp_path / "bad").exists()


def test_segment_cli_set_changes_inference_settings_only(trained, crops, tmp_path, capsys):
    """--set KEY=VALUE changes an inference setting for the run (the output equals the API's with that setting, and
    differs from the stored one); weights-bound keys, unknown keys, wrong types and out-of-range values fail on one
    line before anything is written."""
    from dataclasses import replace

    from PIL import Image

    model, *_ = trained
    model_file = model.save(tmp_path / "model.pt")
    image = crops[0]["image"]
    Image.fromarray(image).save(tmp_path / "crop.png")
    inference = model.config.inference
    model.config = replace(model.config, inference=replace(inference, mask_threshold=2.0))
    try:
        expected = model.segment(image).labels
    finally:
        model.config = replace(model.config, inference=inference)
    stored = model.segment(image).labels
    assert (expected > 0).sum() < (stored > 0).sum()  # a higher logit bar: smaller masks
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "crop.png"), "-o", str(out), "--model", str(model_file),
                 "--set", "inference.mask_threshold=2"]) == 0
    assert np.array_equal(read_labels(out / "crop.labels.tif"), expected)
    for bad, says in (("prompter.backbone=resnet34", "fixed by the model's weights"),
                      ("segmentor.image_size=256", "fixed by the model's weights"),
                      ("inference.nope=1", "no such setting"), ("inference.overlap=abc", "expected int"),
                      ("inference.one_piece=1", "expected bool"), ("inference.overlap=500", "smaller than the SAM"),
                      ("inference.nms_iou=0", "must be in (0, 1]"), ("inference.mask_threshold", "KEY=VALUE")):
        capsys.readouterr()
        code = main(["segment", str(tmp_path / "crop.png"), "-o", str(tmp_path / "bad"), "--model",
                     str(model_file), "--set", bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and says in err[0], (bad, err)
        assert not (tmp_path / "bad").exists()


def test_segment_cli_set_reaches_block_workers(trained, crops, tmp_path, monkeypatch, capsys):
    """With --set, block workers get this process's model (its changed settings), not the stored file by name."""
    import tifffile

    import promptsam.inference.large_image as large_image
    from promptsam.errors import PromptSAMError

    model, *_ = trained
    model_file = model.save(tmp_path / "model.pt")
    tifffile.imwrite(tmp_path / "crop.tif", crops[0]["image"])
    seen = {}

    def record(pipeline, slide, **kwargs):
        seen.update(kwargs, threshold=pipeline.config.inference.mask_threshold)
        raise PromptSAMError("stop here")

    monkeypatch.setattr(large_image, "segment_slide", record)
    for extra, worker_model, threshold in (([], str(model_file), 0.0),
                                           (["--set", "inference.mask_threshold=1.5"], None, 1.5)):
        seen.clear()
        main(["segment", str(tmp_path / "crop.tif"), "-o", str(tmp_path / "out"), "--model", str(model_file),
              "--block-size", "64", *extra])
        assert "stop here" in capsys.readouterr().err
        assert seen["worker_model"] == worker_model and seen["threshold"] == threshold


def test_segment_cli_wrong_model_file(tmp_path, capsys, shared_data):
    wrong = tmp_path / "wrong.pt"
    torch.save({"not": torch.zeros(1)}, wrong)
    image = shared_data / "consep" / "train" / "images" / "train_10_002.png"
    code = main(["segment", str(image), "-o", str(tmp_path / "out"), "--model", str(wrong)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and str(wrong) in err[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- official init and PEFT
def test_official_checkpoint_initialises_training_at_256(tmp_path, crops):
    """A `mobile_sam.pt`-format file saved from the reference implementation starts the segmentor at 256 input."""
    mobile_sam = pytest.importorskip("mobile_sam")
    from conftest import randomize_

    ref = randomize_(mobile_sam.sam_model_registry["vit_t"](), seed=3)
    official = tmp_path / "mobile_sam.pt"
    torch.save(ref.state_dict(), official)
    config = load_config("promptnucseg_cpu", {"segmentor.checkpoint": str(official), "segmentor.image_size": 256,
                                              "prompter.backbone": "resnet18", "prompter.fpn_channels": 32,
                                              "prompter.num_levels": 2})
    model = PromptNucSeg(config)
    key = "image_encoder.layers.1.blocks.0.attn.qkv.weight"
    assert torch.equal(model.segmentor.state_dict()[key], ref.state_dict()[key])
    collate = SegmentorCollate(num_objects=4, num_negatives=1, seed=0)
    pad = ((0, 128), (0, 128))
    big = [{"image": np.pad(c["image"], (*pad, (0, 0))), "label": np.pad(c["label"], pad)} for c in crops[:1]]
    losses = train_steps(SegmentorTask(config, model.train()), lambda: collate([dict(c) for c in big]), 2)
    assert np.isfinite(losses).all()
    assert not torch.equal(model.segmentor.state_dict()[key], ref.state_dict()[key])  # it trained


def test_lora_trains_adapters_only_and_round_trips(tmp_path):
    config = load_config("promptnucseg_cpu", {"segmentor.peft": "lora", "segmentor.lora_rank": 4,
                                              "segmentor.image_size": 128, "prompter.backbone": "resnet18",
                                              "prompter.fpn_channels": 32, "prompter.num_levels": 2})
    model = PromptNucSeg(config)
    SegmentorTask(config, model)
    trainable = [n for n, p in model.segmentor.image_encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.requires_grad for p in model.segmentor.mask_decoder.parameters())
    assert not any(p.requires_grad for p in model.segmentor.prompt_encoder.parameters())
    again = PromptNucSeg.load(model.save(tmp_path / "lora.pt"), device="cpu")
    assert set(again.state_dict()) == set(model.state_dict())


def test_detail_branch_starts_as_plain_sam_then_trains(crops):
    """The high-resolution branch (models.sam.detail) leaves SAM's masks unchanged until trained, then gets
    gradients; decoding without its features is refused."""
    base = {"segmentor.image_size": 128, "prompter.backbone": "resnet18", "prompter.fpn_channels": 32,
            "prompter.num_levels": 2, "inference.precision": "fp32"}
    torch.manual_seed(0)
    plain = PromptNucSeg(load_config("promptnucseg_cpu", {**base, "segmentor.detail": False})).eval()
    detailed = PromptNucSeg(load_config("promptnucseg_cpu", {**base, "segmentor.detail": True})).eval()
    missing = detailed.segmentor.load_state_dict(plain.segmentor.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("detail.") for k in missing)
    from promptsam.data.targets import nucleus_points

    points, _ = nucleus_points(crops[0]["label"])
    a = plain.segment(crops[0]["image"], points=points).labels
    b = detailed.segment(crops[0]["image"], points=points).labels
    assert np.array_equal(a, b)

    sam = detailed.segmentor
    images = sam.normalize(torch.from_numpy(crops[0]["image"]).permute(2, 0, 1)[None].float())
    prompt = (torch.tensor([[[40.0, 40.0]]]), torch.ones(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="image_details"):
        sam.decode(sam.embed_images(images), points=prompt)
    low, _ = sam.decode(sam.embed_images(images), points=prompt, image_details=sam.embed_details(images))
    low.sum().backward()
    assert sam.detail.out.weight.grad.abs().sum() > 0


def test_duplicate_share_puts_a_negative_inside_the_own_nucleus():
    """With duplicate_share the chosen objects' negative is a second point inside their own nucleus, away from the
    positive; without it every negative lies in another nucleus; targets are whole nuclei either way."""
    labels = np.zeros((96, 96), np.uint16)
    for i, (y, x) in enumerate([(10, 10), (10, 50), (50, 10), (50, 50), (80, 80)], start=1):
        labels[y : y + 14, x : x + 14] = i
    rng = np.random.default_rng(0)
    own, far = [], []
    for share in (0.0, 1.0):
        out = sample_point_prompts(labels, num_objects=5, num_negatives=1, rng=rng, duplicate_share=share)
        c = out["coords"].astype(int)
        pos, neg = labels[c[:, 0, 1], c[:, 0, 0]], labels[c[:, 1, 1], c[:, 1, 0]]
        assert (out["point_labels"][:, 1] == 0).all() and (neg > 0).all()
        assert all(m.sum() == 14 * 14 and m[y, x] for m, (x, y) in zip(out["masks"], c[:, 0], strict=True))
        own.append(float((pos == neg).mean()))
        far.append(float(np.linalg.norm(out["coords"][:, 1] - out["coords"][:, 0], axis=1).min()))
    assert own == [0.0, 1.0] and far[1] > 2.0


def test_point_refiner_starts_at_zero_and_corrects_only_around_the_point():
    """The per-object refiner (models.sam.detail.PointRefiner) leaves SAM's logits unchanged until trained, changes
    only its window around each object's positive point, gets gradients, and an earlier run's segmentor without it
    loads into a run that has it."""
    from promptsam.methods.promptnucseg import _load_keeping

    base = {"segmentor.image_size": 128, "prompter.backbone": "resnet18", "prompter.fpn_channels": 32,
            "prompter.num_levels": 2, "inference.precision": "fp32", "segmentor.detail": True}
    torch.manual_seed(0)
    plain = PromptNucSeg(load_config("promptnucseg_cpu", base)).eval()
    refined = PromptNucSeg(load_config("promptnucseg_cpu", {**base, "segmentor.refine": True})).eval()
    _load_keeping(refined.segmentor, plain.segmentor.state_dict(), keep=("refine.",), source="test")
    sam, ref = plain.segmentor, refined.segmentor
    images = sam.normalize(torch.rand(2, 3, 128, 128) * 255)
    coords = torch.tensor([[[20.0, 24.0], [60.0, 60.0]], [[100.0, 110.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    index = torch.tensor([0, 1])
    args = dict(points=(coords, labels), image_index=index)
    a, _ = sam.decode(sam.embed_images(images), image_details=sam.embed_details(images), **args)
    b, _ = ref.decode(ref.embed_images(images), image_details=ref.embed_details(images), **args)
    assert torch.equal(a, b)
    ref.refine.crop = 16  # a 16 x 16 window of the 32 x 32 logit map (4 input pixels per logit pixel)
    with torch.no_grad():
        ref.refine.out.weight.normal_(0, 0.5)
    b, _ = ref.decode(ref.embed_images(images), image_details=ref.embed_details(images), **args)
    changed = ((a - b).abs()[:, 0] > 0).numpy()
    for obj, (x, y) in enumerate(coords[:, 0].tolist()):
        x0, y0 = (min(max(round(v / 4) - 8, 0), 16) for v in (x, y))
        window = np.zeros((32, 32), bool)
        window[y0 : y0 + 16, x0 : x0 + 16] = True
        assert not changed[obj][~window].any() and changed[obj][window].mean() > 0.9
    b.sum().backward()
    assert ref.refine.inputs.weight.grad.abs().sum() > 0 and ref.detail.out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="refine needs segmentor.detail"):
        PromptNucSeg(load_config("promptnucseg_cpu", {**base, "segmentor.detail": False, "segmentor.refine": True}))


def test_negatives_skip_points_nearer_than_min_distance():
    pts = np.array([[0, 0], [3, 0], [10, 0], [30, 0]], np.float32)
    assert nearest_others(pts, 1)[:, 0].tolist() == [1, 0, 1, 2]
    assert nearest_others(pts, 1, min_distance=5)[:, 0].tolist() == [2, 2, 1, 2]
    coords, labels = point_prompts(pts, pts, 1, min_distance=25)
    assert labels[:, 1].tolist() == [0, 0, -1, 0]  # the point at x=10 has nothing 25 px away: padding


def test_register_ships_bf16_with_changed_settings(trained, tmp_path, monkeypatch):
    import promptsam.pretrained as pretrained

    model, *_ = trained
    source = model.save(tmp_path / "run.pt")
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path / "weights")
    monkeypatch.setattr(pretrained, "REGISTRY_FILE", tmp_path / "weights" / "models.json")
    (tmp_path / "weights").mkdir()
    pretrained.main([str(source), "--name", "mine", "--set", "inference.nucleus_diameter=40",
                     "--set", "inference.scale_range=[1.5, 2.5]"])
    entry = json.loads((tmp_path / "weights" / "models.json").read_text())["mine"]
    shipped = PromptNucSeg.load(tmp_path / "weights" / entry["file"], device="cpu")
    assert shipped.config.inference.nucleus_diameter == 40
    assert shipped.config.inference.scale_range == (1.5, 2.5)
    assert shipped.config.segmentor == model.config.segmentor
    assert next(iter(torch.load(tmp_path / "weights" / entry["file"], weights_only=True)["segmentor"].values())).dtype \
        == torch.bfloat16


def test_test_time_flips_make_prompts_mirror_with_the_image(trained, crops):
    from dataclasses import replace

    model, *_ = trained
    image = crops[0]["image"]
    assert image.shape[0] % 32 == 0 and image.shape[1] % 32 == 0  # no padding: the four views are the same set
    prompter = model.config.prompter
    # without the mask filter: the filter reads the unflipped view's nucleus mask, which is not the mirror image of
    # the mirrored image's (the network is not flip-equivariant), so points at its edge may differ
    model.config = replace(model.config, prompter=replace(prompter, test_time_flips=True, mask_filter=False))
    try:
        found = model.find_prompts(image)
        mirrored = model.find_prompts(np.ascontiguousarray(image[:, ::-1]))
        fast = model.find_prompts(image, fast=True)  # one view, despite the model's flips setting
        model.config = replace(model.config, prompter=replace(prompter, test_time_flips=False, mask_filter=False))
        single = model.find_prompts(image)  # the same model without flips
    finally:
        model.config = replace(model.config, prompter=prompter)
    assert np.array_equal(fast["points"], single["points"]) and np.array_equal(fast["scores"], single["scores"])
    assert len(found["points"]) > 0
    back = mirrored["points"].copy()
    back[:, 0] = image.shape[1] - 1 - back[:, 0]
    # the four views of the mirrored image are the image's four views: the same points, mirrored
    order = lambda p: p[np.lexsort((p[:, 1], p[:, 0]))]  # noqa: E731
    assert np.allclose(order(found["points"]), order(back), atol=1e-3)
    # the nucleus mask is the unflipped view's (one mask-head pass for the four views)
    assert np.array_equal(found["foreground"], model.find_prompts(image)["foreground"])


def test_prompt_map_marks_each_point_with_the_nucleus_it_prompts():
    """A prompter point inside a nucleus marks that nucleus, one just outside marks the nearest within reach, one far
    from every nucleus (a false positive) marks nothing; flips and magnification move the marks with the labels."""
    from promptsam.data.sampling import prompt_map
    from promptsam.data.transforms import RandomFlipRotate, Zoom

    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15], labels[20:30, 20:35] = 1, 2
    marks = prompt_map(labels, np.array([[8, 8], [12, 10], [33, 17], [2, 38]], np.float32))
    assert {i: np.argwhere(marks == i)[:, ::-1].tolist() for i in (1, 2)} == {1: [[8, 8], [12, 10]], 2: [[33, 17]]}
    assert np.count_nonzero(marks) == 3
    sample = {"image": np.zeros((40, 40, 3), np.uint8), "label": labels, "prompts": marks, "classes": None}
    sample = Zoom(2)(RandomFlipRotate(p=1.0)(sample, np.random.default_rng(1)), np.random.default_rng(1))
    assert (sample["label"][sample["prompts"] == 1] == 1).all()  # the marks inside nucleus 1 stay inside it
    for i, n in ((1, 2), (2, 1)):
        assert np.count_nonzero(sample["prompts"] == i) == 4 * n  # each marked pixel became a 2x2 block


def test_own_points_prompt_the_nuclei_the_prompter_found():
    """With the whole share, a nucleus the prompter found is prompted at the prompter's point, and its neighbours'
    negative is that point too; nuclei it missed keep drawn interior points; without a map nothing changes."""
    from promptsam.data.sampling import prompt_map

    labels = np.zeros((96, 96), np.uint16)
    for i, (y, x) in enumerate([(10, 10), (10, 50), (50, 10), (50, 50)], start=1):
        labels[y : y + 14, x : x + 14] = i
    found = np.array([[13, 12], [52, 60]], np.float32)  # nuclei 1 and 4, off their centres
    marks = prompt_map(labels, found)
    out = sample_point_prompts(labels, num_objects=4, num_negatives=1, rng=np.random.default_rng(0),
                               prompted=marks, prompted_share=1.0)
    positives = out["coords"][:, 0]
    ids = labels[positives[:, 1].astype(int), positives[:, 0].astype(int)]
    assert sorted(ids.tolist()) == [1, 2, 3, 4]
    assert all(m[y, x] for m, (x, y) in zip(out["masks"], positives.astype(int), strict=True))
    assert np.array_equal(positives[ids == 1][0], found[0]) and np.array_equal(positives[ids == 4][0], found[1])
    negatives = out["coords"][:, 1]
    for own, nucleus in ((found[0], 1), (found[1], 4)):  # whoever has this nucleus as its neighbour sees its point
        hits = labels[negatives[:, 1].astype(int), negatives[:, 0].astype(int)] == nucleus
        assert (negatives[hits] == own).all()
    plain = sample_point_prompts(labels, num_objects=4, num_negatives=1, rng=np.random.default_rng(0))
    none = sample_point_prompts(labels, num_objects=4, num_negatives=1, rng=np.random.default_rng(0), prompted=marks)
    assert np.array_equal(plain["coords"], none["coords"])


def test_own_points_are_found_once_per_stage_and_cached(trained, crops, tmp_path, monkeypatch):
    """The segmentor stage's own points: every training item gets the map of the points the model's prompter finds
    on it, kept in the stage's cache, which a resumed run reads instead of running the prompter again."""
    from promptsam.data.sampling import prompt_map
    from promptsam.data.targets import nucleus_points
    from promptsam.methods.promptnucseg import _attach_own_points

    model, *_ = trained
    calls = []

    def find_prompts(self, image, **kwargs):  # the nuclei's centroids, nudged: a prompter with known answers
        calls.append(image.shape)
        return {"points": nucleus_points(next(c["label"] for c in crops if c["image"] is image))[0] + 1.0}

    monkeypatch.setattr(PromptNucSeg, "find_prompts", find_prompts)
    items = [{"image": c["image"], "label": c["label"]} for c in crops]
    cache = tmp_path / "segmentor" / "own_points.npz"
    _attach_own_points(model, items, cache, progress=False)
    assert len(calls) == len(items) and cache.is_file() and len(np.load(cache).files) == len(items)
    for item in items:
        expected = prompt_map(item["label"], nucleus_points(item["label"])[0] + 1.0)
        assert np.array_equal(item["prompts"], expected) and item["prompts"].any()
    again = [{"image": c["image"], "label": c["label"]} for c in crops]
    _attach_own_points(model, again, cache, progress=False)
    assert len(calls) == len(items)  # read from the cache, the prompter did not run again
    assert all(np.array_equal(a["prompts"], b["prompts"]) for a, b in zip(items, again, strict=True))
    assert model.training is False  # the model's mode is left as it was


def test_mask_threshold_grows_or_shrinks_every_mask(trained, crops):
    """A lower logit threshold draws each nucleus as a superset of the default mask; a higher one as a subset."""
    from dataclasses import replace

    from promptsam.data.targets import nucleus_points

    model, *_ = trained
    points, _ = nucleus_points(crops[0]["label"])
    inference = model.config.inference
    areas = {}
    try:
        for t in (-2.0, 0.0, 2.0):
            model.config = replace(model.config, inference=replace(inference, mask_threshold=t, one_piece=False))
            areas[t] = np.count_nonzero(model.segment(crops[0]["image"], points=points).labels)
    finally:
        model.config = replace(model.config, inference=inference)
    assert areas[-2.0] > areas[0.0] > areas[2.0] > 0


def _crop_dataset(crops, root):
    """The crops as a dataset folder in the uniform layout (train split)."""
    from PIL import Image

    from promptsam.io import write_labels

    for sub in ("images", "labels"):
        (root / "train" / sub).mkdir(parents=True)
    for i, crop in enumerate(crops):
        Image.fromarray(crop["image"]).save(root / "train" / "images" / f"crop{i}.png")
        write_labels(root / "train" / "labels" / f"crop{i}.tif", crop["label"])
    return root


def test_train_from_a_model_fine_tunes_its_weights_with_its_settings(trained, crops, tmp_path, capsys):
    """`train promptnucseg --from MODEL`: the run takes the model's settings (here a changed inference value) with
    the fine-tuning rate and schedule, and its weights (a prompter-only run keeps its segmentor); other class counts
    get a fresh class head; bad uses fail on one line."""
    from dataclasses import replace

    model, *_ = trained
    source = replace(model.config, inference=replace(model.config.inference, nms_iou=0.21),
                     prompter=replace(model.config.prompter, lr=3e-3))
    model.config, kept = source, model.config
    try:
        model_file = model.save(tmp_path / "source.pt")
    finally:
        model.config = kept
    data = str(_crop_dataset(crops, tmp_path / "data"))
    short = ["--data", data, "--val", data, "--no-progress", "--set", "training.max_epochs=1",
             "--set", "training.samples_per_epoch=4", "--set", "training.val_every=1"]
    run = tmp_path / "run"
    assert main(["train", "promptnucseg", "--from", str(model_file), "--out", str(run), "--stage", "prompter",
                 *short]) == 0
    tuned = PromptNucSeg.load(run / "model.pt", device="cpu")
    assert tuned.config.inference.nms_iou == 0.21 and tuned.config.prompter.backbone == "resnet18"
    # the fine-tuning rate and schedule replace the stored ones; --set values replace those
    assert tuned.config.prompter.lr == 1e-4 and tuned.config.training.lr_schedule == "cosine"
    assert tuned.config.training.max_epochs == 1
    from promptsam.methods.promptnucseg import UNUSED_SEGMENTOR_KEYS  # never run, not saved

    for key, value in model.segmentor.state_dict().items():
        assert key.startswith(UNUSED_SEGMENTOR_KEYS) or torch.equal(tuned.segmentor.state_dict()[key], value), key
    assert any(not torch.equal(tuned.prompter.state_dict()[k], v) for k, v in model.prompter.state_dict().items())

    typed = tmp_path / "typed"
    assert main(["train", "promptnucseg", "--from", str(model_file), "--out", str(typed), "--stage", "segmentor",
                 "--set", "prompter.num_classes=3", "--set", "class_names=[a, b, c]", *short]) == 0
    retyped = PromptNucSeg.load(typed / "model.pt", device="cpu")
    assert retyped.config.prompter.num_classes == 3
    assert retyped.prompter.cls_head[-1].out_features == 4  # three types and background
    same = {k: v for k, v in model.prompter.state_dict().items() if not k.startswith("cls_head.")}
    assert all(torch.equal(retyped.prompter.state_dict()[k], v) for k, v in same.items())

    lora = tmp_path / "lora"  # LoRA on the fully trained encoder: its weights become the adapters' base
    assert main(["train", "promptnucseg", "--from", str(model_file), "--out", str(lora), "--stage", "segmentor",
                 "--peft", "lora", "--rank", "2", *short]) == 0
    adapted = PromptNucSeg.load(lora / "model.pt", device="cpu").segmentor.state_dict()
    base = [k for k in adapted if ".base_layer." in k]
    assert base and any(".lora_A." in k for k in adapted)
    assert all(torch.equal(adapted[k], model.segmentor.state_dict()[k.replace(".base_layer.", ".")]) for k in base)

    capsys.readouterr()
    for extra in (["--preset", "promptnucseg_cpu"], []):
        source_arg = str(model_file) if extra else str(tmp_path / "missing.pt")
        code = main(["train", "promptnucseg", "--from", source_arg, "--out", str(tmp_path / "bad"), *extra, *short])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert ("--preset" in err[0]) if extra else ("missing.pt" in err[0])
    assert not (tmp_path / "bad").exists()
