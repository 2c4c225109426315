"""`promptsam data check`: integrity problems and warnings on small tmp datasets and the real data."""

from __future__ import annotations

import numpy as np
import tifffile
from PIL import Image

from promptsam.cli.main import main
from promptsam.data.check import check_dataset
from promptsam.io import write_labels, write_volume


def make_uniform(root, names=("a", "b"), *, classes=True):
    """Write a tiny clean uniform-layout dataset under root/train and return that split folder."""
    base = root / "train"
    (base / "images").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((12, 10), 40, np.uint8)).save(base / "images" / f"{name}.png")
        labels = np.zeros((12, 10), np.uint16)
        labels[2:5, 2:5], labels[7:10, 4:8] = 1, 2
        write_labels(base / "labels" / f"{name}.tif", labels)
        if classes:
            write_labels(base / "classes" / f"{name}.tif", np.where(labels > 0, labels + 1, 0))
    return base


def _messages(report, severity):
    return [f"{f.where}: {f.message}" for f in report.findings if f.severity == severity]


def test_clean_dataset_passes(tmp_path, capsys):
    make_uniform(tmp_path)
    report = check_dataset(tmp_path)
    assert report.n_cases == 2 and not report.findings
    assert main(["data", "check", str(tmp_path)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_problems_are_reported_and_exit_non_zero(tmp_path, capsys):
    split = make_uniform(tmp_path, names=("a", "b", "c", "d", "e"))
    (split / "labels" / "a.tif").unlink()  # image without label
    write_labels(split / "labels" / "b.tif", np.ones((5, 5), np.uint8))  # shape mismatch
    bad = np.zeros((12, 10), np.uint16)
    bad[2:5, 2:5] = 1
    write_labels(split / "labels" / "c.tif", bad)
    write_labels(split / "classes" / "c.tif", np.where(bad > 0, 1, 0) + np.eye(12, 10, dtype=np.uint8))
    write_labels(split / "labels" / "z.tif", bad)  # label without image
    report = check_dataset(tmp_path)
    problems = "\n".join(_messages(report, "problem"))
    assert "a.png: no label file" in problems
    assert "b.tif: label shape (5, 5) does not match image shape (12, 10)" in problems
    assert "c.tif:" in problems and "background pixel(s) have a class" in problems
    assert "z.tif: no image file" in problems
    assert main(["data", "check", str(tmp_path)]) == 1
    assert "PROBLEM" in capsys.readouterr().out


def test_mixed_class_instance_is_a_problem(tmp_path):
    split = make_uniform(tmp_path, names=("a",))
    classes = tifffile.imread(split / "classes" / "a.tif")
    classes[2, 2] = 4  # one pixel of instance 1 gets another class
    write_labels(split / "classes" / "a.tif", classes)
    assert any("more than one class" in m for m in _messages(check_dataset(tmp_path), "problem"))


def test_non_sequential_ids_and_empty_maps_warn(tmp_path):
    split = make_uniform(tmp_path, names=("a", "b"), classes=False)
    lab = np.zeros((12, 10), np.uint16)
    lab[1:3, 1:3] = 5
    write_labels(split / "labels" / "a.tif", lab)
    write_labels(split / "labels" / "b.tif", np.zeros((12, 10), np.uint16))
    report = check_dataset(tmp_path)
    warnings = "\n".join(_messages(report, "warning"))
    assert not report.problems and "not sequential" in warnings and "empty" in warnings
    assert main(["data", "check", str(tmp_path)]) == 0
    assert main(["data", "check", "--strict", str(tmp_path)]) == 1


def test_3d_affine_nan_and_float_labels(tmp_path):
    img = np.ones((4, 5, 6), np.float32)
    lab = np.zeros((4, 5, 6), np.uint8)
    lab[1:3, 1:3, 1:3] = 1
    write_volume(tmp_path / "imagesTr" / "ok_0000.nii.gz", img, np.eye(4))
    write_volume(tmp_path / "labelsTr" / "ok.nii.gz", lab.astype(np.float32), np.eye(4))
    write_volume(tmp_path / "imagesTr" / "moved_0000.nii.gz", img, np.eye(4))
    write_volume(tmp_path / "labelsTr" / "moved.nii.gz", lab, np.diag([2.0, 1, 1, 1]))
    nan = img.copy()
    nan[0, 0, 0] = np.nan
    write_volume(tmp_path / "imagesTr" / "nan_0000.nii.gz", nan, np.eye(4))
    write_volume(tmp_path / "labelsTr" / "nan.nii.gz", lab, np.eye(4))
    report = check_dataset(tmp_path)
    problems, warnings = "\n".join(_messages(report, "problem")), "\n".join(_messages(report, "warning"))
    assert "moved.nii.gz: affine differs from the image affine by up to 1 mm" in problems
    assert "nan_0000.nii.gz: volume contains 1 NaN or infinite voxel(s)" in problems
    assert "ok.nii.gz: labels stored as float32" in warnings


def test_missing_folder_is_one_line_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope: folder not found" in err and err.count("\n") == 1


def test_real_consep_and_ms_lesion_are_clean(shared_data):
    for name in ("consep", "ms_lesion_3d"):
        report = check_dataset(shared_data / name)
        assert report.n_cases > 0 and not report.problems, report.format()


def test_data_convert_lists_formats_and_rejects_unknown(capsys):
    assert main(["data", "convert", "--list"]) == 0
    assert "monuseg" in capsys.readouterr().out
    assert main(["data", "convert", "no-such-format", "a", "b"]) == 2
    assert "unknown format 'no-such-format'" in capsys.readouterr().err
