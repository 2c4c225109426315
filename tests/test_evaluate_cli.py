"""`promptsam evaluate` run in-process on tmp folders and on two real MoNuSeg label maps."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from promptsam.cli.main import main
from promptsam.evaluation import evaluate_folders, summarize
from promptsam.io import read_labels, write_labels, write_volume

MONUSEG = ("TCGA-21-5784-01Z-00-DX1", "TCGA-B0-5698-01Z-00-DX1")  # both in the train split


def _labels(shift: int = 0) -> np.ndarray:
    lab = np.zeros((32, 32), np.uint16)
    lab[2 + shift : 10 + shift, 2:10] = 1
    lab[15:25, 15:25] = 2
    lab[26:30, 2:6] = 3
    return lab


def _folders(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for stem in ("img1", "img2"):
        write_labels(gt / f"{stem}.tif", _labels())
        write_labels(pred / f"{stem}.labels.tif", _labels(shift=1 if stem == "img2" else 0))
    return gt, pred


def test_scores_table_json_and_csv(tmp_path, capsys):
    gt, pred = _folders(tmp_path)
    out_json, out_csv = tmp_path / "out" / "r.json", tmp_path / "out" / "r.csv"
    argv = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(out_json), "--csv", str(out_csv)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "img1" in table and "img2" in table and "mean (2 2d)" in table and "pq" in table
    doc = json.loads(out_json.read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    assert rows["img1"]["pq"] == pytest.approx(1.0, abs=1e-5) and rows["img2"]["pq"] < 1.0
    assert doc["mean"]["2d"]["n"] == 2 and doc["mean"]["2d"]["n_gt"] == 6
    with out_csv.open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["name"] for r in csv_rows] == ["img1", "img2", "mean"]
    assert float(csv_rows[-1]["pq"]) == pytest.approx(doc["mean"]["2d"]["pq"])


def test_missing_prediction_is_one_line_error_unless_allowed(tmp_path, capsys):
    gt, pred = _folders(tmp_path)
    write_labels(gt / "img3.tif", _labels())
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "img3.tif: no prediction" in err and err.count("\n") == 1
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--allow-missing"]) == 0
    assert "skipped" in capsys.readouterr().err
    write_labels(pred / "extra.tif", _labels())
    (gt / "img3.tif").unlink()
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert "extra.tif: no ground truth" in capsys.readouterr().err


def test_bad_file_names_it_and_writes_nothing(tmp_path, capsys):
    gt, pred = _folders(tmp_path)
    (pred / "img2.labels.tif").write_bytes(b"this is not a tiff")
    out = tmp_path / "out"
    argv = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(out / "r.json")]
    argv += ["--csv", str(out / "r.csv")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "img2.labels.tif" in err and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())
    write_labels(pred / "img2.labels.tif", np.zeros((8, 8), np.uint8))  # readable, wrong shape
    assert main(argv) == 2
    assert "img2.labels.tif: shape (8, 8) does not match" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_uniform_layout_gt_png_pred_and_classes(tmp_path, capsys):
    split = tmp_path / "ds" / "train"
    lab = _labels()
    write_labels(split / "labels" / "a.tif", lab)
    write_labels(split / "classes" / "a.tif", np.where(lab > 0, lab % 2 + 1, 0))
    (tmp_path / "pred").mkdir()
    Image.fromarray(lab.astype(np.uint8)).save(tmp_path / "pred" / "a.png")
    write_labels(tmp_path / "pred" / "a.classes.tif", np.where(lab > 0, 1, 0))
    pred = str(tmp_path / "pred")
    rows = evaluate_folders(pred, split, pred_classes_dir=pred)
    assert rows[0]["pq"] == pytest.approx(1.0, abs=1e-5)
    assert {"mpq", "bpq", "pq_1", "pq_2"} <= rows[0].keys() and rows[0]["mpq"] < rows[0]["bpq"]
    assert main(["evaluate", "--pred", pred, "--gt", str(split), "--pred-classes", pred]) == 0
    assert "mpq" in capsys.readouterr().out


def test_3d_volumes_use_header_spacing(tmp_path, capsys):
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:6, 2:6, 2:6] = 1
    pred = np.roll(gt, 2, axis=2)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    write_volume(tmp_path / "gt" / "case.nii.gz", gt, affine)
    write_volume(tmp_path / "pred" / "case.nii.gz", pred, np.eye(4))
    rows = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert rows[0]["kind"] == "3d" and rows[0]["hd95"] == pytest.approx(6.0)
    rows = evaluate_folders(tmp_path / "pred", tmp_path / "gt", spacing=[1.0])
    assert rows[0]["hd95"] == pytest.approx(2.0)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    assert "hd95" in capsys.readouterr().out


def test_real_monuseg_gt_read_in_place_vs_perturbed(shared_data, tmp_path, capsys):
    labels_dir = shared_data / "monuseg" / "train" / "labels"
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    rng = np.random.default_rng(0)
    for stem in MONUSEG:
        src = labels_dir / f"{stem}.tif"
        (gt_dir / src.name).symlink_to(src)  # read in place, never copied
        lab = read_labels(src)
        drop = rng.choice(np.arange(1, lab.max() + 1), size=lab.max() // 10, replace=False)
        pert = np.where(np.isin(lab, drop), 0, lab)
        pert = ndi.grey_erosion(pert, size=3) if stem == MONUSEG[1] else pert
        write_labels(pred_dir / f"{stem}.labels.tif", pert)
    out_json = tmp_path / "r.json"
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out_json)]) == 0
    doc = json.loads(out_json.read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    assert set(rows) == set(MONUSEG)
    assert 0.85 < rows[MONUSEG[0]]["dq"] < 0.99 and rows[MONUSEG[0]]["sq"] == pytest.approx(1.0, abs=1e-4)
    assert rows[MONUSEG[1]]["sq"] < rows[MONUSEG[0]]["sq"] and rows[MONUSEG[1]]["n_gt"] > 250
    assert summarize(doc["rows"])["2d"]["pq"] == pytest.approx(doc["mean"]["2d"]["pq"])
