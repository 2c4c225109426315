"""Points files as SAM prompts: CSV tables, QuPath point GeoJSON, label images; bad files fail on one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from promptsam.errors import InputError
from promptsam.io import measure_instances, write_csv, write_labels
from promptsam.io.points import find_points_file, read_points


def test_csv_with_x_y_columns_in_any_order(tmp_path):
    path = tmp_path / "pts.csv"
    path.write_text("id,y,x,class\n1,10.5,3,tumour\n2,0,7.25,stroma\n\n")
    np.testing.assert_allclose(read_points(path), [[3, 10.5], [7.25, 0]])


def test_promptsams_own_csv_gives_the_centroids_back(tmp_path):
    labels = np.zeros((40, 50), np.uint16)
    labels[5:15, 10:20] = 1  # centroid (x, y) = (14.5, 9.5)
    labels[20:31, 30:41] = 2  # (35, 25)
    path = write_csv(tmp_path / "out.csv", measure_instances(labels))
    np.testing.assert_allclose(read_points(path), [[14.5, 9.5], [35, 25]])


def test_qupath_point_and_multipoint_features_in_pixel_edge_coordinates(tmp_path):
    """QuPath puts a pixel's centre at +0.5 (as promptsam's GeoJSON outlines do); prompts sit on pixel centres."""
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [4, 5]}, "properties": {}},
                {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[1, 2], [3.5, 4.5]]},
                 "properties": {"objectType": "annotation"}}]
    path = tmp_path / "points.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    np.testing.assert_allclose(read_points(path), [[3.5, 4.5], [0.5, 1.5], [3, 4]])


def test_label_image_gives_one_point_inside_each_instance(tmp_path):
    labels = np.zeros((30, 30), np.uint16)
    labels[2:8, 2:8] = 1
    labels[12:28, 10:28] = 2
    labels[15:25, 14:28] = 0  # instance 2 is a C: its centroid (16.6, 19.5) lies in the gap
    assert labels[20, 17] == 0
    path = write_labels(tmp_path / "seeds.tif", labels)
    points = read_points(path)
    assert len(points) == 2
    for i, (x, y) in enumerate(np.rint(points).astype(int), 1):
        assert labels[y, x] == i


def test_points_file_of_an_image_in_a_folder(tmp_path):
    (tmp_path / "a.geojson").write_text("[]")
    (tmp_path / "b.csv").write_text("x,y\n1,1\n")
    assert find_points_file(tmp_path, "b") == tmp_path / "b.csv"
    assert find_points_file(tmp_path, "a") == tmp_path / "a.geojson"
    with pytest.raises(InputError, match="no points file for c"):
        find_points_file(tmp_path, "c")
    (tmp_path / "d.png").write_bytes(b"an image, not its points")
    (tmp_path / "d.tif").write_bytes(b"its label image")
    assert find_points_file(tmp_path, "d", image=tmp_path / "d.png") == tmp_path / "d.tif"
    (tmp_path / "d.tif").unlink()
    with pytest.raises(InputError, match="no points file for d"):  # the image itself is never its own points file
        find_points_file(tmp_path, "d", image=tmp_path / "d.png")


@pytest.mark.parametrize(("name", "text", "message"), [
    ("cols.csv", "a,b\n1,2\n", "no x,y or centroid_x,centroid_y columns"),
    ("nan.csv", "x,y\n1,2\n3,oops\n", "line 3 has no number"),
    ("empty.csv", "", "empty CSV"),
    ("header.csv", "x,y\n", "no points"),
    ("poly.geojson", json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0],
                                 [1, 1], [0, 0]]]}}]), "feature 1 is a Polygon"),
    ("broken.geojson", "{not json", "unreadable GeoJSON"),
    ("far.csv", "x,y\n5,5\n100,5\n", "point 2 .x=100, y=5. lies outside the 64x32 image"),
    ("pts.txt", "x,y\n1,1\n", "unknown points format"),
])
def test_bad_points_files_name_the_file_and_the_problem(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        read_points(path, shape=(32, 64))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_missing_points_file(tmp_path):
    with pytest.raises(InputError, match="points file not found"):
        read_points(tmp_path / "nope.csv")


TYPES = ("tumour", "lymphocyte", "stroma")


def test_point_types_by_name_or_id_for_a_typed_model(tmp_path):
    """A `class` column (names in any case, ids, 0 or empty = unclassified) or QuPath classification names."""
    from promptsam.io.points import read_prompts

    table = tmp_path / "typed.csv"
    table.write_text("x,y,class\n1,1,Tumour\n2,2,3\n3,3,0\n4,4,\n5,5,lymphocyte\n")
    points, classes = read_prompts(table, class_names=TYPES)
    assert len(points) == 5 and classes.tolist() == [1, 3, 0, 0, 2]
    assert read_prompts(table, class_names=("nucleus",))[1] is None  # a class-agnostic model ignores types
    untyped = tmp_path / "untyped.csv"
    untyped.write_text("x,y\n1,1\n")
    assert read_prompts(untyped, class_names=TYPES)[1] is None

    features = [{"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[1, 1], [2, 2]]},
                 "properties": {"classification": {"name": "Stroma", "color": [0, 0, 255]}}},
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}, "properties": {}}]
    qupath = tmp_path / "typed.geojson"
    qupath.write_text(json.dumps(features))
    assert read_prompts(qupath, class_names=TYPES)[1].tolist() == [3, 3, 0]

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("x,y,class\n1,1,macrophage\n")
    with pytest.raises(InputError, match="'macrophage' is not one of the model's types") as err:
        read_prompts(wrong, class_names=TYPES)
    assert str(err.value).startswith(str(wrong))
