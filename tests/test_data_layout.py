"""Uniform and nnU-Net layouts, NucleusDataset, and the fixed validation split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from promptsam.data import NucleusDataset, list_samples, split_names
from promptsam.data.splits import DATASETS, MIN_VAL, VAL, manifest_strata, select_val, split_samples, unit_of
from promptsam.errors import InputError
from promptsam.io import write_labels, write_volume

# MoNuSeg official test images (../shared/data/README.md): must never appear anywhere in our splits
MONUSEG_TEST = ("2Z-A9J9", "44-2665", "69-7764", "A6-6782", "AC-A2FO", "AO-A0J2", "CU-A0YN", "EJ-A46H",
                "FG-A4MU", "GL-6846", "HC-7209", "HT-8564", "IZ-8196", "ZF-A9R5")  # fmt: skip


def make_uniform(root, names=("a", "b"), *, classes=True, split="train"):
    """Write a tiny uniform-layout dataset under root/split and return the split folder."""
    base = root / split
    for i, name in enumerate(names):
        image = np.full((12, 10), 40 + i, np.uint8)
        (base / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(base / "images" / f"{name}.png")
        labels = np.zeros((12, 10), np.uint16)
        labels[2:5, 2:5], labels[7:10, 4:8] = 1, 2
        write_labels(base / "labels" / f"{name}.tif", labels)
        if classes:
            write_labels(base / "classes" / f"{name}.tif", np.where(labels > 0, labels + 1, 0))
    return base


def test_uniform_layout_from_dataset_root_or_split_folder(tmp_path):
    split = make_uniform(tmp_path)
    for root in (tmp_path, split):
        samples = list_samples(root)
        assert [s.name for s in samples] == ["a", "b"]
        assert samples[0].image.name == "a.png" and samples[0].label.name == "a.tif"
        assert samples[0].classes.name == "a.tif" and not samples[0].is_3d


def test_missing_label_is_an_error_unless_incomplete_allowed(tmp_path):
    split = make_uniform(tmp_path, classes=False)
    (split / "labels" / "b.tif").unlink()
    with pytest.raises(InputError, match="b.png.*no label"):
        list_samples(tmp_path)
    samples = list_samples(tmp_path, complete=False)
    assert samples[1].label is None and samples[1].classes is None


def test_nnunet_layout(tmp_path):
    affine = np.eye(4)
    for case in ("case_001", "case_002"):
        write_volume(tmp_path / "imagesTr" / f"{case}_0000.nii.gz", np.zeros((4, 5, 6), np.float32), affine)
        write_volume(tmp_path / "labelsTr" / f"{case}.nii.gz", np.zeros((4, 5, 6), np.uint8), affine)
    samples = list_samples(tmp_path, "train")
    assert [s.name for s in samples] == ["case_001", "case_002"]
    assert samples[0].is_3d and samples[0].label.name == "case_001.nii.gz"
    item = NucleusDataset(samples)[0]
    assert item["image"].shape == (4, 5, 6) and item["image"].dtype == np.float32
    assert np.allclose(item["affine"], affine) and item["spacing"] == pytest.approx((1.0, 1.0, 1.0))
    assert item["label"].shape == (4, 5, 6) and np.issubdtype(item["label"].dtype, np.integer)


def test_nucleus_dataset_items_and_transform(tmp_path):
    make_uniform(tmp_path)
    ds = NucleusDataset(list_samples(tmp_path), transform=lambda d: {**d, "seen": True})
    item = ds[1]
    assert len(ds) == 2 and item["name"] == "b" and item["seen"]
    assert item["image"].shape == (12, 10, 3) and item["image"].dtype == np.uint8  # grey stored -> 3 channels
    assert item["label"].max() == 2 and item["classes"].max() == 3
    assert NucleusDataset(list_samples(make_uniform(tmp_path / "x", classes=False)))[0]["classes"] is None


def test_unknown_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no 'train/images'"):
        list_samples(tmp_path)


def test_consep_unit_is_the_source_tile():
    assert unit_of("consep", "train_12_005") == unit_of("consep", "train_12_008") == "tile12"
    assert unit_of("monuseg", "x") == "x"


@pytest.mark.parametrize("dataset", DATASETS)
def test_split_is_frozen_disjoint_and_reproducible(shared_data, dataset):
    split = split_names(dataset, root=shared_data)
    train, val = set(split["train"]), set(split["val"])
    assert val and not train & val and val == set(VAL[dataset])
    strata = manifest_strata(shared_data, dataset) if dataset == "dsb2018" else None
    assert select_val(dataset, sorted(train | val), strata) == sorted(val)  # the documented rule gives VAL
    if dataset in ("monuseg", "dsb2018", "consep"):
        assert len(val) >= MIN_VAL.get(dataset, 1) and 0.15 <= len(val) / len(train | val) <= 0.25
    if dataset == "consep":
        assert not {unit_of("consep", n) for n in train} & {unit_of("consep", n) for n in val}
    if dataset == "dsb2018":
        assert {strata[n] for n in val} == set(strata.values())  # every modality in val
    if dataset == "monuseg":
        assert not any(t in n for n in train | val for t in MONUSEG_TEST)


def test_split_samples_are_the_split_names_cases(shared_data):
    names = split_names("consep", root=shared_data)
    for split in ("train", "val"):
        samples = split_samples("consep", split, root=shared_data)
        assert [s.name for s in samples] == names[split]
        assert all(s.image.is_file() and s.label.is_file() for s in samples)


def test_real_consep_samples_have_classes(shared_data):
    samples = list_samples(shared_data / "consep")
    assert len(samples) == 52 and all(s.classes is not None for s in samples)
