"""Per-instance measurements: hand-computed values, class/score/intensity inputs, atomic CSV."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from promptsam.io.measurements import MEASUREMENT_COLUMNS, measure_instances, measurement_columns, write_csv


def _hand_map() -> np.ndarray:
    """A 3x3 square (id 2), a 2x4 horizontal bar (id 5), a single pixel (id 9) on the border."""
    lab = np.zeros((10, 12), np.uint16)
    lab[1:4, 2:5] = 2
    lab[6:8, 3:7] = 5
    lab[9, 11] = 9
    return lab


def test_hand_computed_rows() -> None:
    rows = measure_instances(_hand_map())
    assert [r["id"] for r in rows] == [2, 5, 9]
    square, bar, dot = rows
    assert (square["centroid_x"], square["centroid_y"], square["area"]) == (3.0, 2.0, 9)
    assert (square["bbox_x1"], square["bbox_y1"], square["bbox_x2"], square["bbox_y2"]) == (2, 1, 5, 4)
    assert (bar["centroid_x"], bar["centroid_y"], bar["area"]) == (4.5, 6.5, 8)  # wide in x
    assert (bar["bbox_x1"], bar["bbox_y1"], bar["bbox_x2"], bar["bbox_y2"]) == (3, 6, 7, 8)
    assert (dot["centroid_x"], dot["centroid_y"], dot["area"]) == (11.0, 9.0, 1)
    assert (dot["bbox_x2"], dot["bbox_y2"]) == (12, 10)  # exclusive
    assert square["solidity"] == 1.0 and square["eccentricity"] == 0.0
    assert 0 < bar["eccentricity"] < 1 and square["perimeter"] > 0
    assert all(r["class"] == 0 and math.isnan(r["score"]) for r in rows)
    assert tuple(square) == MEASUREMENT_COLUMNS == measurement_columns()


def test_classes_scores_image_spacing_offset() -> None:
    lab = _hand_map()
    cls = np.zeros(lab.shape, np.uint8)
    cls[lab == 2] = 3
    cls[1, 2] = 1  # minority
    cls[6, 3] = 4  # the bar has one classified pixel: it wins over unclassified ones
    prob = np.where(lab == 5, 0.8, 0.2)
    img = np.zeros(lab.shape + (3,), np.uint8)
    img[..., 0] = 10
    img[lab == 2, 1] = 100
    rows = measure_instances(lab, classes=cls, scores=prob, image=img, spacing=0.5, offset=(100, 200))
    square, bar, dot = rows
    assert [r["class"] for r in rows] == [3, 4, 0]
    assert [r["score"] for r in rows] == [0.2, 0.8, 0.2]
    assert square["area_um2"] == 9 * 0.25
    assert (square["mean_intensity_0"], square["mean_intensity_1"], bar["mean_intensity_1"]) == (10.0, 100.0, 0.0)
    assert (square["centroid_x"], square["centroid_y"]) == (103.0, 202.0)
    assert (square["bbox_x1"], square["bbox_y2"]) == (102, 204)
    assert tuple(square) == measurement_columns(spacing=0.5, channels=3)
    assert measure_instances(lab, spacing=(0.5, 2.0))[0]["area_um2"] == 9.0

    lut = np.full(10, np.nan)
    lut[5] = 0.3
    rows = measure_instances(lab, classes={2: 1}, scores=lut)
    assert [r["class"] for r in rows] == [1, 0, 0]
    assert rows[1]["score"] == 0.3 and math.isnan(rows[0]["score"])
    grey = measure_instances(lab, image=np.full(lab.shape, 7.0))
    assert grey[0]["mean_intensity_0"] == 7.0


def test_bad_inputs() -> None:
    lab = _hand_map()
    with pytest.raises(ValueError, match="2D"):
        measure_instances(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="negative"):
        measure_instances(np.array([[-1, 0]]))
    with pytest.raises(ValueError, match="lookup table"):
        measure_instances(lab, scores=np.zeros(5))
    with pytest.raises(ValueError, match="image shape"):
        measure_instances(lab, image=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="spacing"):
        measure_instances(lab, spacing=0)
    assert measure_instances(np.zeros((4, 4), np.uint16)) == []


def test_write_csv_atomic(tmp_path: Path) -> None:
    rows = measure_instances(_hand_map(), spacing=0.25)
    out = write_csv(tmp_path / "cells.csv", rows)
    with out.open(newline="") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == list(rows[0]) and len(back) == 3
    assert back[1]["centroid_x"] == "4.5" and back[0]["score"] == "nan"
    assert [p.name for p in tmp_path.iterdir()] == ["cells.csv"]

    empty = write_csv(tmp_path / "empty.csv", [])
    assert empty.read_text() == ",".join(MEASUREMENT_COLUMNS) + "\n"
    cols = measurement_columns(spacing=0.25, channels=3)
    assert write_csv(tmp_path / "empty3.csv", [], columns=cols).read_text() == ",".join(cols) + "\n"


def test_failed_csv_write_leaves_no_file(tmp_path: Path) -> None:
    rows = measure_instances(_hand_map())
    bad = rows[:1] + [{**rows[1], "unexpected": 1}]
    with pytest.raises(ValueError):
        write_csv(tmp_path / "new.csv", bad)
    assert list(tmp_path.iterdir()) == []
    old = write_csv(tmp_path / "old.csv", rows)
    before = old.read_text()
    with pytest.raises(ValueError):
        write_csv(old, bad)
    assert old.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["old.csv"]
