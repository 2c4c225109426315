"""3D volumes: NIfTI reading/writing with geometry, one-line errors, case listing and the SAM-Med3D protocol."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from promptsam.data.volumes import (
    crop_or_pad,
    dataset_modality,
    list_volume_cases,
    normalize_intensity,
    paste,
    preprocess,
    restore,
    roi_center,
    sam_med3d_transforms,
    sliding_window_predict,
)
from promptsam.errors import InputError
from promptsam.io.volumes import Volume, read_label, read_pair, read_volume, write_volume
from promptsam.metrics.semantic import dice

AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


def save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def ellipsoid(shape, center, radii):
    grid = np.indices(shape, dtype=np.float64)
    r = sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, center, radii, strict=True))
    return (r <= 1).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------------- io
def test_round_trip_keeps_affine_shape_and_header(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(6, 7, 5)).astype(np.float32)
    src = nib.Nifti1Image(arr, AFFINE)
    src.set_qform(AFFINE, code=2)
    src.set_sform(AFFINE, code=4)
    src.header.set_xyzt_units("mm", "sec")
    nib.save(src, str(tmp_path / "in.nii.gz"))

    vol = read_volume(tmp_path / "in.nii.gz")
    assert isinstance(vol, Volume) and vol.array.dtype == np.float32 and vol.shape == (6, 7, 5)
    assert np.allclose(vol.affine, AFFINE) and vol.spacing == (1.0, 1.0, 2.0)
    assert np.array_equal(vol.array, arr)

    write_volume(tmp_path / "out.nii.gz", vol.array > 0, like=vol)
    back = nib.load(str(tmp_path / "out.nii.gz"))
    assert back.shape == (6, 7, 5) and np.allclose(back.affine, AFFINE)
    assert int(back.header["qform_code"]) == 2 and int(back.header["sform_code"]) == 4
    assert back.header.get_xyzt_units() == ("mm", "sec")
    assert np.array_equal(np.asarray(back.dataobj), (arr > 0).astype(np.uint8))

    write_volume(tmp_path / "plain.nii", arr, AFFINE)  # a bare affine works too
    again = read_volume(tmp_path / "plain.nii")
    assert np.allclose(again.affine, AFFINE) and np.array_equal(again.array, arr)
    assert not list(tmp_path.glob(".*"))  # atomic: no temporary left behind


def test_write_refuses_a_shape_that_does_not_match_the_reference(tmp_path):
    vol = read_volume(save(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.float32)))
    with pytest.raises(InputError, match="b.nii.gz"):
        write_volume(tmp_path / "b.nii.gz", np.zeros((4, 4, 5)), like=vol)
    assert not (tmp_path / "b.nii.gz").exists()


def test_singleton_fourth_axis_is_squeezed(tmp_path):
    vol = read_volume(save(tmp_path / "v.nii.gz", np.ones((4, 5, 6, 1), np.float32)))
    assert vol.shape == (4, 5, 6)


def _bad_cases(tmp_path):
    ok = np.ones((4, 5, 6), np.float32)
    nan = ok.copy()
    nan[1, 2, 3] = np.nan
    inf = ok.copy()
    inf[0, 0, 0] = np.inf
    (tmp_path / "garbage.nii.gz").write_bytes(b"this is not a nifti file at all")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n")
    return {
        "missing": (tmp_path / "missing.nii.gz", "file not found"),
        "garbage": (tmp_path / "garbage.nii.gz", "unreadable NIfTI"),
        "png": (tmp_path / "image.png", "not a NIfTI"),
        "2d": (save(tmp_path / "flat.nii.gz", np.ones((4, 5), np.float32)), "2D image"),
        "4d": (save(tmp_path / "multi.nii.gz", np.ones((4, 5, 6, 2), np.float32)), "2 channels"),
        "nan": (save(tmp_path / "nan.nii.gz", nan), "NaN or infinite"),
        "inf": (save(tmp_path / "inf.nii.gz", inf), "NaN or infinite"),
    }


@pytest.mark.parametrize("case", ["missing", "garbage", "png", "2d", "4d", "nan", "inf"])
def test_bad_volume_is_one_line_naming_the_file(tmp_path, case):
    path, message = _bad_cases(tmp_path)[case]
    with pytest.raises(InputError) as info:
        read_volume(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text


def _pair(tmp_path, label, label_affine=AFFINE, shape=(4, 5, 6)):
    image = save(tmp_path / "img.nii.gz", np.ones(shape, np.float32))
    return image, save(tmp_path / "lab.nii.gz", label, label_affine)


@pytest.mark.parametrize(
    ("label", "label_affine", "message"),
    [
        (np.ones((4, 5, 7), np.uint8), AFFINE, "does not match image shape"),
        (np.ones((4, 5, 6), np.uint8), AFFINE + np.diag([0, 0, 0.01, 0]), "affine differs"),
        (np.zeros((4, 5, 6), np.uint8), AFFINE, "label is empty"),
        (np.full((4, 5, 6), 2, np.uint8), AFFINE, "not binary"),
        (np.full((4, 5, 6), 0.5, np.float32), AFFINE, "non-integer"),
    ],
    ids=["shape", "affine", "empty", "non-binary", "non-integer"],
)
def test_bad_pair_is_one_line_naming_the_label(tmp_path, label, label_affine, message):
    image, lab = _pair(tmp_path, label, label_affine)
    with pytest.raises(InputError) as info:
        read_pair(image, lab)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(lab)) and message in text


def test_pair_tolerates_float_noise_and_optional_rules(tmp_path):
    label = np.zeros((4, 5, 6), np.float32)
    label[1, 1, 1] = 1
    image, lab = _pair(tmp_path, label, AFFINE + 5e-4)  # below the 1e-3 mm tolerance
    vol, mask = read_pair(image, lab)
    assert mask.array.dtype == np.uint8 and mask.array.sum() == 1 and vol.array.dtype == np.float32
    multi = save(tmp_path / "multi.nii.gz", np.full((4, 5, 6), 3, np.int16))
    assert read_label(multi, binary=False).array.max() == 3
    empty = save(tmp_path / "empty.nii.gz", np.zeros((4, 5, 6), np.uint8))
    assert read_label(empty, required=False).array.sum() == 0


# ----------------------------------------------------------------------------------------------------------- folders
def _uniform(root, names):
    for name in names:
        save(root / "train" / "images" / f"{name}.nii.gz", np.ones((4, 4, 4), np.float32))
        save(root / "train" / "labels" / f"{name}.nii.gz", np.ones((4, 4, 4), np.uint8))


def test_uniform_layout_and_frozen_split(tmp_path):
    root = tmp_path / "ms_lesion_3d"
    _uniform(root, ["patient07", "patient19"])
    assert [s.name for s in list_volume_cases(root)] == ["patient07", "patient19"]
    assert [s.name for s in list_volume_cases(root, subset="val")] == ["patient07"]
    assert [s.name for s in list_volume_cases(root, subset="train")] == ["patient19"]
    assert [s.name for s in list_volume_cases(root / "train", subset="val")] == ["patient07"]
    _uniform(tmp_path / "other", ["a"])
    with pytest.raises(InputError, match="no frozen split"):
        list_volume_cases(tmp_path / "other", subset="val")


def test_nnunet_folder_with_dataset_json(tmp_path):
    for case in ("liver_1", "liver_2"):
        save(tmp_path / "imagesTr" / f"{case}_0000.nii.gz", np.ones((4, 4, 4), np.float32))
        save(tmp_path / "labelsTr" / f"{case}.nii.gz", np.ones((4, 4, 4), np.uint8))
    assert dataset_modality(tmp_path) == "MR"  # no dataset.json: the default
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    cases = list_volume_cases(tmp_path)
    assert [c.name for c in cases] == ["liver_1", "liver_2"] and cases[0].image.name == "liver_1_0000.nii.gz"
    assert dataset_modality(tmp_path) == "CT"


def test_msd_training_list(tmp_path):
    save(tmp_path / "imagesTr" / "la_003.nii.gz", np.ones((4, 4, 4), np.float32))
    save(tmp_path / "labelsTr" / "la_003.nii.gz", np.ones((4, 4, 4), np.uint8))
    entry = {"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}
    meta = {"modality": {"0": "MRI"}, "training": [entry]}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    cases = list_volume_cases(tmp_path)
    assert [c.name for c in cases] == ["la_003"] and dataset_modality(tmp_path) == "MRI"


def test_shared_data_cases(shared_data):
    ms = list_volume_cases(shared_data / "ms_lesion_3d", subset="train")
    assert [s.name for s in ms] == ["patient19"] and ms[0].is_3d
    brats = list_volume_cases(shared_data / "brats2021_edema_3d")
    assert [s.name for s in brats] == ["BraTS2021_01646"]
    assert list_volume_cases(shared_data / "brats2021_edema_3d", subset="train") == []


# ------------------------------------------------------------------------------------------------------ crop / paste
def test_crop_or_pad_centres_and_pastes_back():
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(20, 30, 25)).astype(np.float32)
    patch, crop = crop_or_pad(arr, (2.0, 15.0, 24.0), size=16)
    assert patch.shape == (16, 16, 16) and crop.start == (-6, 7, 16)
    assert patch[8, 8, 8] == arr[2, 15, 24]  # the centre voxel sits at size // 2
    assert np.all(patch[:6] == 0) and np.all(patch[:, :, 9:] == 0)  # zero padding outside the volume
    back = paste(patch, crop)
    inside = np.zeros(arr.shape, bool)
    inside[0:10, 7:23, 16:25] = True
    assert np.array_equal(back[inside], arr[inside]) and np.all(back[~inside] == 0)


def test_roi_center_is_the_bounding_box_centre():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[2:5, 3, 4:8] = 1
    assert roi_center(mask) == (3.0, 3.0, 5.5)
    with pytest.raises(ValueError, match="empty"):
        roi_center(np.zeros((3, 3, 3)))


# ---------------------------------------------------------------------------------------------------------- protocol
def test_resample_crop_paste_back_round_trip_of_a_label():
    shape, affine = (70, 80, 40), np.diag([-1.0, 1.0, 2.0, 1.0])  # 1 x 1 x 2 mm, x flipped (kept as stored)
    label = ellipsoid(shape, (30, 45, 20), (12, 9, 6))
    image = np.where(label > 0, 300.0, 100.0).astype(np.float32)
    image[:3] = 0  # background outside the "brain"
    out = preprocess(image, affine, label=label)
    roi = out["roi"]
    assert out["image"].shape == out["label"].shape == (128, 128, 128)
    assert np.allclose(roi.grid_affine[:3, :3], np.diag([-1.5, 1.5, 1.5])) and roi.grid_shape == (47, 54, 53)
    assert out["label"].sum() > 0 and roi.crop.size == (128, 128, 128)
    back = restore(out["label"], roi) > 0.5
    assert back.shape == shape and dice(label, back) > 0.95
    nearest = restore(out["label"], roi, mode="nearest")
    assert nearest.dtype == np.uint8 and dice(label, nearest) > 0.9


def test_round_trip_is_exact_on_a_1p5_mm_grid():
    shape, affine = (40, 36, 30), np.diag([1.5, 1.5, 1.5, 1.0])
    label = ellipsoid(shape, (20, 18, 15), (8, 6, 5))
    out = preprocess(np.ones(shape, np.float32) + label, affine, label=label)
    assert np.array_equal(restore(out["label"], out["roi"], mode="nearest"), label)


def test_given_centre_places_the_crop_like_the_label():
    shape, affine = (60, 60, 60), np.diag([1.5, 1.5, 1.5, 1.0])
    label = ellipsoid(shape, (10, 30, 50), (4, 4, 4))
    image = np.ones(shape, np.float32)
    by_label = preprocess(image, affine, label=label)
    by_centre = preprocess(image, affine, center=roi_center(label))
    assert by_centre["label"] is None and by_label["roi"].crop == by_centre["roi"].crop
    assert by_label["label"][64, 64, 64] == 1  # the lesion centre is the patch centre


def test_intensity_protocol():
    rng = np.random.default_rng(2)
    image = np.zeros((30, 30, 30), np.float32)
    image[5:25, 5:25, 5:25] = rng.normal(500, 50, size=(20, 20, 20))
    z = normalize_intensity(image)
    inside = image > 0
    assert abs(z[inside].mean()) < 1e-4 and abs(z[inside].std(ddof=1) - 1) < 1e-3
    assert np.allclose(z[~inside], -image[inside].mean() / image[inside].std(ddof=1), rtol=1e-4)  # torchio style
    ct = np.array([-3000.0, -1000.0, 0.0, 500.0, 1000.0, 4000.0], np.float32).reshape(1, 2, 3)
    clamped = normalize_intensity(ct, modality="CT")
    assert clamped[0, 0, 0] == clamped[0, 0, 1] and clamped[0, 1, 2] == clamped[0, 1, 1]
    assert not np.allclose(normalize_intensity(ct, modality="MR"), clamped)


def test_training_transforms_flip_with_a_seed():
    from monai.data import MetaTensor

    shape, affine = (40, 40, 40), torch.eye(4, dtype=torch.float64) * 1.5
    affine[3, 3] = 1
    label = ellipsoid(shape, (10, 20, 30), (3, 3, 3)).astype(np.float32)
    image = np.random.default_rng(3).random(shape).astype(np.float32) + 1

    def run(seed):
        d = {"image": MetaTensor(torch.from_numpy(image)[None], affine=affine),
             "label": MetaTensor(torch.from_numpy(label)[None], affine=affine)}
        return sam_med3d_transforms(train=True, seed=seed)(d)

    a, b = run(0), run(0)
    assert a["image"].shape == (1, 128, 128, 128) and np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    flips = {tuple(np.asarray(run(s)["label"])[0].nonzero()[0][:1]) for s in range(6)}
    assert len(flips) > 1  # different seeds flip differently
    assert np.asarray(a["label"]).sum() == label.sum()


def test_sliding_window_blends_an_identity_predictor_back_to_the_input():
    rng = np.random.default_rng(4)
    volume = rng.random((70, 50, 40)).astype(np.float32)
    out = sliding_window_predict(volume, lambda x: x * 2, roi_size=32, overlap=0.5)
    assert out.shape == volume.shape and np.allclose(out, volume * 2, atol=1e-4)
    two = sliding_window_predict(volume, lambda x: np.concatenate([x.numpy(), -x.numpy()], axis=1), roi_size=32)
    assert two.shape == (2, *volume.shape) and np.allclose(two[1], -volume, atol=1e-4)
    small = sliding_window_predict(volume[:10, :10, :10], lambda x: x + 1, roi_size=32)
    assert np.allclose(small, volume[:10, :10, :10] + 1, atol=1e-4)
