"""GeoJSON export: pixel-edge outlines that shapely accepts, QuPath properties, offsets, round trip, real labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

shapely = pytest.importorskip("shapely")
from shapely.geometry import shape  # noqa: E402

from promptsam.errors import InputError  # noqa: E402
from promptsam.io.geojson import (  # noqa: E402
    CONSEP_CLASS_COLORS,
    CONSEP_CLASS_NAMES,
    PANNUKE_CLASS_COLORS,
    PANNUKE_CLASS_NAMES,
    labels_to_features,
    read_geojson,
    write_geojson,
)

SQUARE, ELL, RING, DOT, PIECES, BORDER, WIDE = 1, 2, 3, 4, 5, 6, 7


def _hand_map() -> np.ndarray:
    """Hand-made 14x16 map: square, L-shape, ring with hole, single pixel, two pieces, border object, wide bar."""
    lab = np.zeros((14, 16), np.uint16)
    lab[1:4, 1:4] = SQUARE
    lab[6:10, 1:3] = ELL
    lab[8:10, 3:5] = ELL
    lab[1:6, 6:11] = RING
    lab[3, 8] = 0
    lab[13, 0] = DOT  # also touches the bottom-left border
    lab[7:9, 7:9] = PIECES
    lab[11:12, 12:14] = PIECES
    lab[0:2, 14:16] = BORDER  # top-right corner
    lab[12:14, 6:12] = WIDE  # 6 wide, 2 high
    return lab


def _by_label(features: list[dict]) -> dict[int, dict]:
    return {int(f["properties"]["measurements"]["Label"]): f for f in features}


def _parts(geom):
    return [geom] if geom.geom_type == "Polygon" else list(geom.geoms)


def _check_feature(feature: dict, mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> None:
    """Valid, closed, CCW exterior / CW holes, area = pixel count, pixel centres inside = the mask."""
    gj = feature["geometry"]
    rings = [gj["coordinates"]] if gj["type"] == "Polygon" else gj["coordinates"]
    for poly in rings:
        for ring in poly:
            assert ring[0] == ring[-1] and len(ring) >= 5
    geom = shape(gj)
    assert geom.is_valid, shapely.is_valid_reason(geom)
    assert gj["type"] == ("Polygon" if len(_parts(geom)) == 1 else "MultiPolygon")
    for part in _parts(geom):
        assert part.exterior.is_ccw
        assert all(not hole.is_ccw for hole in part.interiors)
    assert geom.area == mask.sum()
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    inside = shapely.contains_xy(geom, xx.ravel() + 0.5 + offset[0], yy.ravel() + 0.5 + offset[1])
    np.testing.assert_array_equal(inside.reshape(mask.shape), mask)


def test_hand_map_geometries_are_valid_and_exact() -> None:
    lab = _hand_map()
    features = labels_to_features(lab)
    assert len(features) == 7
    feats = _by_label(features)
    assert sorted(feats) == [1, 2, 3, 4, 5, 6, 7]
    for k, feature in feats.items():
        _check_feature(feature, lab == k)
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] == "detection"
        assert feature["properties"]["isLocked"] is False
        assert "classification" not in feature["properties"]
    assert feats[SQUARE]["geometry"] == {"type": "Polygon", "coordinates": [[[1, 1], [4, 1], [4, 4], [1, 4], [1, 1]]]}
    assert feats[DOT]["geometry"]["coordinates"] == [[[0, 13], [1, 13], [1, 14], [0, 14], [0, 13]]]
    assert len(feats[ELL]["geometry"]["coordinates"][0]) == 7  # six corners, collinear vertices dropped
    ring = shape(feats[RING]["geometry"])
    assert len(ring.interiors) == 1 and ring.interiors[0].bounds == (8.0, 3.0, 9.0, 4.0)
    assert feats[PIECES]["geometry"]["type"] == "MultiPolygon"
    assert [p.area for p in _parts(shape(feats[PIECES]["geometry"]))] == [4.0, 2.0]  # largest first
    assert shape(feats[BORDER]["geometry"]).bounds == (14.0, 0.0, 16.0, 2.0)  # reaches the image edge
    # x = column, y = row: the 6x2 bar is wide in x
    assert shape(feats[WIDE]["geometry"]).bounds == (6.0, 12.0, 12.0, 14.0)
    ids = [f["id"] for f in features]
    assert len(set(ids)) == len(ids) and ids == [f["id"] for f in labels_to_features(lab)]  # unique, deterministic


def test_measurements_in_features() -> None:
    lab = _hand_map()
    feats = _by_label(labels_to_features(lab, scores={SQUARE: 0.75}))
    m = feats[SQUARE]["properties"]["measurements"]
    assert m["Area px"] == 9.0 and m["Score"] == 0.75
    assert (m["Centroid X px"], m["Centroid Y px"]) == (2.5, 2.5)  # pixel-edge frame, like the polygon
    assert m["Perimeter px"] > 0
    assert "Score" not in feats[ELL]["properties"]["measurements"]  # NaN is never written
    bare = labels_to_features(lab, measurements=False)
    assert all("measurements" not in f["properties"] for f in bare)


def test_pinches_and_islands_stay_valid() -> None:
    """Diagonal touches, self-touching outlines, islands inside holes: seeded noise maps, checked pixel by pixel."""
    special = [
        np.array([[1, 0], [0, 1]]),  # two pixels touching at a corner
        np.array([[1, 1, 1], [1, 0, 1], [1, 1, 0]]),  # ring closed only through a corner
        np.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]),  # island
        np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]]),  # diamond of corner touches around a hole
    ]
    rng = np.random.default_rng(7)
    noisy = [rng.integers(1, 4, (9, 11)) * (rng.random((9, 11)) < rng.uniform(0.3, 0.9)) for _ in range(150)]
    for lab in special + noisy:
        features = labels_to_features(lab, measurements=False)
        ids = np.unique(lab[lab > 0])
        assert len(features) == ids.size
        for inst, feature in zip(ids, features, strict=True):
            _check_feature(feature, lab == inst)
    island = labels_to_features(special[2], measurements=False)[0]["geometry"]
    assert island["type"] == "MultiPolygon" and len(island["coordinates"][0]) == 2  # outer piece keeps its hole


def test_largest_piece_only() -> None:
    lab = _hand_map()
    feats = _by_label(labels_to_features(lab, largest_piece_only=True))
    geom = feats[PIECES]["geometry"]
    assert geom["type"] == "Polygon" and shape(geom).area == 4.0


def test_offset_moves_geometry_and_centroids() -> None:
    lab = _hand_map()
    offset = (1000, 20)
    plain = _by_label(labels_to_features(lab))
    moved = _by_label(labels_to_features(lab, offset=offset))
    for k in plain:
        _check_feature(moved[k], lab == k, offset)
        a, b = shape(plain[k]["geometry"]), shape(moved[k]["geometry"])
        assert b.equals(shapely.affinity.translate(a, *offset))
        pm, mm = plain[k]["properties"]["measurements"], moved[k]["properties"]["measurements"]
        assert mm["Centroid X px"] == pytest.approx(pm["Centroid X px"] + 1000)
        assert mm["Centroid Y px"] == pytest.approx(pm["Centroid Y px"] + 20)
    assert isinstance(moved[SQUARE]["geometry"]["coordinates"][0][0][0], int)  # integer offsets keep integers
    half = _by_label(labels_to_features(lab, offset=(0.5, 0)))
    assert half[SQUARE]["geometry"]["coordinates"][0][0] == [1.5, 1]
    with pytest.raises(ValueError, match="offset"):
        labels_to_features(lab, offset=(1, 2, 3))


def test_classification_from_class_map_mapping_and_presets() -> None:
    lab = _hand_map()
    cls = np.zeros(lab.shape, np.uint8)
    cls[lab == SQUARE] = 2
    cls[1, 1] = 3  # minority pixel: the majority wins
    cls[lab == ELL] = 4
    feats = _by_label(labels_to_features(lab, classes=cls, class_names="consep"))
    assert feats[SQUARE]["properties"]["classification"] == {"name": "Inflammatory", "color": [160, 90, 160]}
    assert feats[ELL]["properties"]["classification"] == {"name": "Spindle-shaped", "color": [80, 160, 80]}
    assert "classification" not in feats[RING]["properties"]  # class 0 = unclassified

    feats = _by_label(labels_to_features(lab, classes={SQUARE: 1, ELL: 5}, class_names="pannuke"))
    assert feats[SQUARE]["properties"]["classification"]["name"] == "Neoplastic"
    assert feats[ELL]["properties"]["classification"] == {"name": "Epithelial", "color": [0, 120, 255]}

    lut = np.zeros(lab.max() + 1, int)
    lut[DOT] = 1
    feats = _by_label(labels_to_features(lab, classes=lut, class_names={1: "Tumor"}, class_colors={1: (200, 0, 0)}))
    assert feats[DOT]["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    feats = _by_label(labels_to_features(lab, classes={SQUARE: 3}))
    assert feats[SQUARE]["properties"]["classification"]["name"] == "Class 3"
    with pytest.raises(ValueError, match="preset"):
        labels_to_features(lab, classes=cls, class_names="nope")
    with pytest.raises(ValueError, match="lookup table"):
        labels_to_features(lab, classes=np.zeros(3, int))


def test_class_tables_are_distinct() -> None:
    assert list(CONSEP_CLASS_NAMES.values()) == ["Other", "Inflammatory", "Epithelial", "Spindle-shaped"]
    assert list(PANNUKE_CLASS_NAMES.values()) == ["Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"]
    for names, colors in ((CONSEP_CLASS_NAMES, CONSEP_CLASS_COLORS), (PANNUKE_CLASS_NAMES, PANNUKE_CLASS_COLORS)):
        assert set(names) == set(colors)
        assert len(set(colors.values())) == len(colors)


def test_object_types() -> None:
    lab = _hand_map()
    cells = labels_to_features(lab, object_type="cell")
    assert all(f["properties"]["objectType"] == "cell" and f["nucleusGeometry"] == f["geometry"] for f in cells)
    assert labels_to_features(lab, object_type="annotation")[0]["properties"]["objectType"] == "annotation"
    with pytest.raises(ValueError, match="object_type"):
        labels_to_features(lab, object_type="blob")
    with pytest.raises(ValueError, match="2D"):
        labels_to_features(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="integer"):
        labels_to_features(np.zeros((3, 4), np.float32))
    assert labels_to_features(np.zeros((5, 5), np.uint16)) == []


def test_write_read_round_trip(tmp_path: Path) -> None:
    lab = _hand_map()
    out = write_geojson(tmp_path / "sub" / "objects.geojson", lab, classes={SQUARE: 1}, class_names="consep",
                        scores={SQUARE: float("nan"), ELL: 0.5}, offset=(10, 20))
    text = out.read_text()
    assert text.endswith("]}\n") and "\n" not in text[:-1] and "NaN" not in text
    data = json.loads(text)
    assert data["type"] == "FeatureCollection"
    expected = labels_to_features(lab, classes={SQUARE: 1}, class_names="consep",
                                  scores={SQUARE: float("nan"), ELL: 0.5}, offset=(10, 20))
    assert read_geojson(out) == expected == data["features"]
    assert [p.name for p in out.parent.iterdir()] == ["objects.geojson"]  # no temp file left

    (tmp_path / "list.json").write_text(json.dumps(expected[:2]))
    assert read_geojson(tmp_path / "list.json") == expected[:2]
    (tmp_path / "one.json").write_text(json.dumps(expected[0]))
    assert read_geojson(tmp_path / "one.json") == expected[:1]
    empty = write_geojson(tmp_path / "empty.geojson", np.zeros((4, 4), np.uint8))
    assert json.loads(empty.read_text()) == {"type": "FeatureCollection", "features": []}


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "bad.geojson"
    with pytest.raises(ValueError):
        write_geojson(target, _hand_map(), object_type="blob")
    assert list(tmp_path.iterdir()) == []


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(InputError, match="broken.geojson"):
        read_geojson(bad)
    other = tmp_path / "geometry.json"
    other.write_text('{"type": "Polygon", "coordinates": []}')
    with pytest.raises(InputError, match="geometry.json"):
        read_geojson(other)
    with pytest.raises(InputError, match="missing.geojson"):
        read_geojson(tmp_path / "missing.geojson")


def test_real_monuseg_labels(shared_data: Path) -> None:
    import tifffile

    paths = sorted((shared_data / "monuseg" / "train" / "labels").glob("*.tif"))[:2]
    if not paths:
        pytest.skip("no MoNuSeg labels in the shared data")
    for path in paths:
        lab = tifffile.imread(path)
        features = labels_to_features(lab)
        ids = np.unique(lab[lab > 0])
        assert len(features) == ids.size
        geoms = [shape(f["geometry"]) for f in features]
        assert all(shapely.is_valid(geoms))
        np.testing.assert_array_equal([g.area for g in geoms], np.bincount(lab.ravel())[ids])
        assert all(g.bounds[2] <= lab.shape[1] and g.bounds[3] <= lab.shape[0] for g in geoms)
