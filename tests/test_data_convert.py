"""Converters into the uniform layout: tiny hand-drawn fixtures in each source format, exact label maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy.io import savemat

from promptsam.data.convert import FORMATS, convert, rle_decode, rle_encode
from promptsam.errors import InputError


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _read(path: Path) -> np.ndarray:
    return tifffile.imread(path)


def test_formats_listed() -> None:
    assert set(FORMATS) == {"monuseg", "pannuke", "consep", "dsb2018", "coco", "nnunet", "geojson"}


def test_monuseg_overwrite_largest_piece_and_skip(tmp_path: Path) -> None:
    src = tmp_path / "MoNuSeg"
    image = _rgb(32, 48)
    (src / "Tissue_Images").mkdir(parents=True)
    tifffile.imwrite(src / "Tissue_Images" / "TCGA-X.tif", image)
    regions = [_rect(1.5, 1.5, 20.5, 6.5), _rect(8.5, 0.5, 12.5, 10.5), [[3, 3], [9, 9]],
               _rect(25.5, 20.5, 30.5, 25.5)]
    xml = "<Annotations><Annotation><Regions>" + "".join(
        "<Region><Vertices>" + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in r) + "</Vertices></Region>"
        for r in regions) + "</Regions></Annotation></Annotations>"
    (src / "Annotations").mkdir()
    (src / "Annotations" / "TCGA-X.xml").write_text(xml)

    written = convert("monuseg", src, tmp_path / "out")
    assert written == [tmp_path / "out" / "train" / "labels" / "TCGA-X.tif"]
    expected = np.zeros((32, 48), np.uint16)
    expected[2:7, 13:21] = 1  # region 1 split by region 2: only the larger right piece survives
    expected[1:11, 9:13] = 2
    expected[21:26, 26:31] = 3  # the 2-vertex region is skipped
    label = _read(written[0])
    assert label.dtype == np.uint16
    np.testing.assert_array_equal(label, expected)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/train/images/TCGA-X.png")), image)
    assert not (tmp_path / "out/train/classes").exists()


def test_pannuke_merges_channels_classes_and_tissues(tmp_path: Path) -> None:
    img_dir, mask_dir = tmp_path / "Fold 2" / "images" / "fold2", tmp_path / "Fold 2" / "masks" / "fold2"
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.float64)
    masks = np.zeros((2, 32, 32, 6))
    masks[0, 2:7, 2:7, 0], masks[0, 10:15, 10:15, 0], masks[0, 20:26, 20:26, 2] = 3, 7, 3
    masks[..., 5] = (masks[..., :5].sum(-1) == 0)
    np.save(img_dir / "images.npy", images)
    np.save(img_dir / "types.npy", np.array(["Breast", "Colon"]))
    np.save(mask_dir / "masks.npy", masks)

    out = tmp_path / "out"
    written = convert("pannuke", tmp_path / "Fold 2", out, split="fold2")
    assert [p.name for p in written] == ["fold2_00000.tif", "fold2_00001.tif"]
    expected = np.zeros((32, 32), np.uint16)
    expected[2:7, 2:7], expected[10:15, 10:15], expected[20:26, 20:26] = 1, 2, 3
    np.testing.assert_array_equal(_read(written[0]), expected)
    classes = _read(out / "fold2/classes/fold2_00000.tif")
    assert classes.dtype == np.uint8
    np.testing.assert_array_equal(classes, np.choose(expected, [0, 1, 1, 3]))
    assert not _read(written[1]).any()  # an image without nuclei is a valid negative tile
    np.testing.assert_array_equal(np.asarray(Image.open(out / "fold2/images/fold2_00000.png")), images[0])
    assert (out / "fold2/tissues.csv").read_text() == "name,tissue\nfold2_00000,Breast\nfold2_00001,Colon\n"


def _consep_src(root: Path) -> Path:
    rgba = np.dstack([_rgb(32, 32, 2), np.full((32, 32), 200, np.uint8)])
    inst = np.zeros((32, 32))
    inst[2:6, 2:6], inst[10:14, 2:6], inst[20:26, 20:26] = 1, 2, 4
    (root / "Labels").mkdir(parents=True)
    _png(root / "Images" / "train_1.png", rgba)
    savemat(root / "Labels" / "train_1.mat", {"inst_map": inst, "inst_type": np.array([[2], [4], [1], [6]]),
                                              "type_map": np.zeros((32, 32))})
    tmap = np.zeros((32, 32))
    inst2 = np.zeros((32, 32))
    inst2[5:15, 5:15], tmap[5:15, 5:15], tmap[5:7, 5:15] = 9, 5, 1  # type_map only: majority type 5
    _png(root / "Images" / "train_2.png", rgba[..., :3])
    savemat(root / "Labels" / "train_2.mat", {"inst_map": inst2, "type_map": tmap})
    return root


def test_consep_merged_and_raw_types(tmp_path: Path) -> None:
    src = _consep_src(tmp_path / "CoNSeP" / "Train")
    out = tmp_path / "out"
    written = convert("consep", src, out)
    expected = np.zeros((32, 32), np.uint16)
    expected[2:6, 2:6], expected[10:14, 2:6], expected[20:26, 20:26] = 1, 2, 3
    np.testing.assert_array_equal(_read(written[0]), expected)
    np.testing.assert_array_equal(_read(out / "train/classes/train_1.tif"), np.choose(expected, [0, 2, 3, 4]))
    np.testing.assert_array_equal(_read(out / "train/classes/train_2.tif")[5:15, 5:15], 4)
    assert _read(written[1]).max() == 1
    assert np.asarray(Image.open(out / "train/images/train_1.png")).shape == (32, 32, 3)  # alpha dropped

    convert("consep", src, out, split="raw", raw_types=True)
    np.testing.assert_array_equal(_read(out / "raw/classes/train_1.tif"), np.choose(expected, [0, 2, 4, 6]))


def test_cpm17_without_types(tmp_path: Path) -> None:
    src = tmp_path / "cpm17" / "train"
    inst = np.zeros((24, 24), np.int32)
    inst[1:5, 1:5], inst[10:20, 10:20] = 5, 2
    _png(src / "Images" / "image_00.png", _rgb(24, 24))
    (src / "Labels").mkdir()
    savemat(src / "Labels" / "image_00.mat", {"inst_map": inst})
    written = convert("consep", src, tmp_path / "out")
    np.testing.assert_array_equal(_read(written[0]), np.choose(inst, [0, 0, 1, 0, 0, 2]))
    assert not (tmp_path / "out/train/classes").exists()


def test_dsb2018_masks_overwrite_in_name_order(tmp_path: Path) -> None:
    src = tmp_path / "stage1_train"
    _png(src / "aaa" / "images" / "aaa.png", np.dstack([_rgb(24, 24), np.full((24, 24), 255, np.uint8)]))
    for name, (r, c) in {"b.png": (slice(6, 11), slice(6, 11)), "a.png": (slice(2, 9), slice(2, 9)),
                         "c.png": (slice(15, 21), slice(15, 21))}.items():
        m = np.zeros((24, 24), np.uint8)
        m[r, c] = 255
        _png(src / "aaa" / "masks" / name, m)
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    _png(src / "bbb" / "images" / "bbb.png", grey)
    m = np.zeros((16, 16), np.uint8)
    m[3:6, 3:6] = 255
    _png(src / "bbb" / "masks" / "m.png", m)

    written = convert("dsb2018", src, tmp_path / "out")
    expected = np.zeros((24, 24), np.uint16)
    expected[2:9, 2:9], expected[6:11, 6:11], expected[15:21, 15:21] = 1, 2, 3
    np.testing.assert_array_equal(_read(written[0]), expected)
    assert _read(written[1]).sum() == 9
    rgb = np.asarray(Image.open(tmp_path / "out/train/images/bbb.png"))
    assert rgb.shape == (16, 16, 3) and all((rgb[..., i] == grey).all() for i in range(3))
    assert np.asarray(Image.open(tmp_path / "out/train/images/aaa.png")).shape == (24, 24, 3)


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts (column-major, starting with a zero run), computed independently."""
    flat, counts, current, n = mask.T.ravel(), [], False, 0
    for v in flat:
        if bool(v) != current:
            counts.append(n)
            current, n = bool(v), 0
        n += 1
    return counts + [n]


def test_rle_known_strings_and_round_trip() -> None:
    # literals produced by pycocotools.mask.frPyObjects (negative delta, multi-char and long runs)
    np.testing.assert_array_equal(rle_decode("234N6", [4, 5]).astype(int), [
        [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    block = np.zeros((10, 10), bool)
    block[0:5, 4] = True  # counts [40, 5, 55], column-major
    np.testing.assert_array_equal(rle_decode("X15g1", [10, 10]), block)
    assert rle_encode(block)["counts"] == "X15g1"
    assert rle_encode(rle_decode([0, 300, 2, 98, 800], [30, 40]))["counts"] == "0\\92fInh0"
    rng = np.random.default_rng(3)
    for shape, p in [((7, 9), 0.5), ((60, 50), 0.03), ((5, 4), 0.0), ((3, 3), 1.0)]:
        mask = rng.random(shape) < p
        enc = rle_encode(mask)
        assert enc["size"] == list(shape)
        np.testing.assert_array_equal(rle_decode(enc["counts"], enc["size"]), mask)
        np.testing.assert_array_equal(rle_decode(_runs(mask), shape), mask)
    with pytest.raises(ValueError):
        rle_decode("X1", [10, 10])


def test_coco_polygons_rle_classes_and_boxes(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "x.png", _rgb(32, 32))
    _png(tmp_path / "imgs" / "y.png", _rgb(32, 32, 1))
    m2, m3 = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    m2[20:25, 20:25], m3[4:10, 8:13] = True, True
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [sum(_rect(1.5, 1.5, 10.5, 6.5), [])]},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": {"size": [32, 32], "counts": _runs(m2)}},
        {"id": 3, "image_id": 1, "category_id": 2, "segmentation": rle_encode(m3)},
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [3, 4, 10, 5]},
    ]
    coco = {"images": [{"id": 1, "file_name": "x.png"}, {"id": 2, "file_name": "y.png"}], "annotations": anns,
            "categories": [{"id": 1, "name": "tumor"}, {"id": 2, "name": "immune"}]}
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "train.json").write_text(json.dumps(coco))

    out = tmp_path / "out" / "train"
    written = convert("coco", tmp_path / "ann" / "train.json", tmp_path / "out", images=tmp_path / "imgs")
    assert written == [out / "labels" / "x.tif"]
    expected = np.zeros((32, 32), np.uint16)
    expected[2:7, 2:11], expected[20:25, 20:25], expected[4:10, 8:13] = 1, 2, 3
    np.testing.assert_array_equal(_read(written[0]), expected)
    np.testing.assert_array_equal(_read(out / "classes" / "x.tif"), np.choose(expected, [0, 1, 2, 2]))
    assert (out / "boxes" / "y.csv").read_text() == "x1,y1,x2,y2,class\n3,4,13,9,2\n"
    assert (out / "images" / "y.png").is_file() and not (out / "labels" / "y.tif").exists()
    assert json.loads((out / "classes.json").read_text()) == {"tumor": 1, "immune": 2}


def test_nnunet_copies_volumes_and_checks_affines(tmp_path: Path) -> None:
    src = tmp_path / "Dataset001"
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [5, -4, 2]
    rng = np.random.default_rng(4)
    for d in ("imagesTr", "labelsTr"):
        (src / d).mkdir(parents=True)
    for case in ("case_a", "case_b"):
        img = rng.normal(size=(8, 9, 10)).astype(np.float64)
        lab = (rng.random((8, 9, 10)) < 0.1).astype(np.int16) * 2
        nib.save(nib.Nifti1Image(img, affine), src / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), src / "labelsTr" / f"{case}.nii.gz")
    written = convert("nnunet", src, tmp_path / "out")
    assert [p.name for p in written] == ["case_a.nii.gz", "case_b.nii.gz"]
    for path in written:
        image = nib.load(tmp_path / "out/train/images" / path.name)
        label = nib.load(path)
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, affine)
        np.testing.assert_allclose(label.affine, affine)
        src_img = nib.load(src / "imagesTr" / path.name.replace(".nii.gz", "_0000.nii.gz"))
        np.testing.assert_allclose(np.asarray(image.dataobj), np.asarray(src_img.dataobj, np.float32))
        src_lab = nib.load(src / "labelsTr" / path.name)
        np.testing.assert_array_equal(np.asarray(label.dataobj), np.asarray(src_lab.dataobj))

    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10), np.uint8), np.eye(4)), src / "labelsTr" / "case_b.nii.gz")
    with pytest.raises(InputError, match="case_b.nii.gz.*affine"):
        convert("nnunet", src, tmp_path / "out2")


def test_geojson_holes_multipolygon_classes(tmp_path: Path) -> None:
    _png(tmp_path / "slide.png", _rgb(40, 40))
    outer, hole = _rect(1.5, 1.5, 12.5, 12.5), _rect(4.5, 4.5, 8.5, 8.5)

    def feature(geom: dict, kind: str = "detection", cls: str | None = None) -> dict:
        props: dict = {"objectType": kind}
        if cls:
            props["classification"] = {"name": cls, "color": [255, 0, 0]}
        return {"type": "Feature", "geometry": geom, "properties": props}

    feats = [
        feature({"type": "Polygon", "coordinates": [outer + outer[:1], hole]}, cls="Tumor"),
        feature({"type": "MultiPolygon", "coordinates": [[_rect(1.5, 19.5, 5.5, 23.5)],
                                                         [_rect(29.5, 19.5, 33.5, 23.5)]]}, cls="Stroma"),
        feature({"type": "Polygon", "coordinates": [_rect(14.5, 29.5, 20.5, 35.5)]}),
        feature({"type": "Polygon", "coordinates": [_rect(-1, -1, 50, 50)]}, kind="annotation", cls="Region"),
        feature({"type": "Point", "coordinates": [3, 3]}, cls="Tumor"),
    ]
    (tmp_path / "slide.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))

    written = convert("geojson", tmp_path / "slide.geojson", tmp_path / "out")
    expected = np.zeros((40, 40), np.uint16)
    expected[2:13, 2:13] = 1
    expected[5:9, 5:9] = 0  # hole
    expected[20:24, 2:6] = expected[20:24, 30:34] = 2  # both parts of the MultiPolygon kept
    expected[30:36, 15:21] = 3
    np.testing.assert_array_equal(_read(written[0]), expected)
    np.testing.assert_array_equal(_read(tmp_path / "out/train/classes/slide.tif"), expected.astype(np.uint8))
    table = json.loads((tmp_path / "out/train/classes.json").read_text())
    assert table == {"Tumor": 1, "Stroma": 2, "Unclassified": 3}


@pytest.mark.parametrize("fmt, name, content", [
    ("monuseg", "Annotations/bad.xml", "<Annotations><Region><Vertices><Vertex X="),
    ("coco", "bad.json", "{not json"),
    ("geojson", "bad.geojson", "[1, 2"),
    ("consep", "Labels/bad.mat", "this is not a mat file"),
])
def test_malformed_file_is_named(tmp_path: Path, fmt: str, name: str, content: str) -> None:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(InputError) as err:
        convert(fmt, path.parent if fmt != "monuseg" else tmp_path / "src", tmp_path / "out")
    assert path.name in str(err.value) and "\n" not in str(err.value)


def test_missing_inputs_and_shape_mismatch(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere"):
        convert("dsb2018", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(InputError, match="unknown format"):
        convert("kaggle", tmp_path, tmp_path / "out")
    with pytest.raises(InputError, match="imagesTr"):
        convert("nnunet", tmp_path, tmp_path / "out")
    np.save(tmp_path / "images.npy", np.zeros((2, 8, 8, 3)))
    np.save(tmp_path / "masks.npy", np.zeros((2, 8, 9, 6)))
    with pytest.raises(InputError, match="masks.npy"):
        convert("pannuke", tmp_path, tmp_path / "out")
    src = _consep_src(tmp_path / "consep")
    _png(src / "Images" / "train_2.png", _rgb(20, 20))
    with pytest.raises(InputError, match="train_2.mat.*differs"):
        convert("consep", src, tmp_path / "out")
