"""Reading and writing images and label maps (promptsam.io.images), and the package-level NIfTI API."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from promptsam.errors import InputError
from promptsam.io import Volume, read_image, read_label, read_labels, read_volume, write_labels, write_volume

RNG = np.random.default_rng(0)


def _rgb(h: int = 8, w: int = 9) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_rgb_and_grey_round_trip(tmp_path):
    rgb, grey = _rgb(), _rgb()[..., 0]
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(grey).save(tmp_path / "b.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)
    out = read_image(tmp_path / "b.png")
    assert out.shape == grey.shape and out.dtype == np.uint8


def test_jpeg_and_tiff_dtypes_kept(tmp_path):
    Image.fromarray(_rgb(16, 16)).save(tmp_path / "a.jpg", quality=95)
    assert read_image(tmp_path / "a.jpg").shape == (16, 16, 3)
    u16 = RNG.integers(0, 65535, (6, 7), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "u16.tif", u16)
    assert read_image(tmp_path / "u16.tif").dtype == np.uint16
    f32 = RNG.random((6, 7, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f32, photometric="rgb")
    assert np.array_equal(read_image(tmp_path / "f.tif"), f32)


def test_channel_first_tiff_is_moved_last(tmp_path):
    tifffile.imwrite(tmp_path / "chw.tif", np.zeros((3, 10, 12), np.uint8), photometric="minisblack")
    assert read_image(tmp_path / "chw.tif").shape == (10, 12, 3)


def test_rgba_opaque_alpha_dropped_transparent_rejected(tmp_path):
    rgba = np.dstack([_rgb(), np.full((8, 9), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert np.array_equal(read_image(tmp_path / "opaque.png"), rgba[..., :3])
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "holey.png")
    with pytest.raises(InputError, match="holey.png.*alpha"):
        read_image(tmp_path / "holey.png")


@pytest.mark.parametrize(
    ("name", "write", "match"),
    [
        ("empty.png", lambda p: p.write_bytes(b""), "empty"),
        ("junk.png", lambda p: p.write_bytes(b"not an image at all"), "unreadable"),
        ("tiny.png", lambda p: Image.fromarray(np.zeros((1, 1), np.uint8)).save(p), "too small"),
        ("nan.tif", lambda p: tifffile.imwrite(p, np.full((4, 4), np.nan, np.float32)), "NaN"),
        ("five.tif", lambda p: tifffile.imwrite(p, np.zeros((8, 8, 5), np.uint8), photometric="minisblack"),
         "channel count 5"),
        ("x.gif", lambda p: p.write_bytes(b"GIF89a"), "unsupported image format"),
    ],
)
def test_bad_images_raise_input_error_naming_the_file(tmp_path, name, write, match):
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError, match=match) as err:
        read_image(path)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_missing_image(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.png")


def test_labels_round_trip_uint16_and_uint32_zlib(tmp_path):
    small = RNG.integers(0, 300, (20, 30)).astype(np.int64)
    write_labels(tmp_path / "s.tif", small)
    back = read_labels(tmp_path / "s.tif")
    assert back.dtype == np.uint16 and np.array_equal(back, small)
    big = small.copy()
    big[0, 0] = 70_000
    write_labels(tmp_path / "b.tif", big)
    assert read_labels(tmp_path / "b.tif").dtype == np.uint32
    with tifffile.TiffFile(tmp_path / "b.tif") as tf:
        assert tf.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tif", "s.tif"]  # no temp files left


def test_label_errors(tmp_path):
    with pytest.raises(InputError, match="negative"):
        write_labels(tmp_path / "n.tif", np.array([[0, -1], [1, 2]]))
    with pytest.raises(InputError, match=r"\.tif"):
        write_labels(tmp_path / "n.png", np.zeros((2, 2), np.uint8))
    tifffile.imwrite(tmp_path / "f.tif", np.array([[0, 1.5], [2, 3]], np.float32))
    with pytest.raises(InputError, match="f.tif.*non-integer"):
        read_labels(tmp_path / "f.tif")
    tifffile.imwrite(tmp_path / "g.tif", np.array([[0, 1], [2, 3]], np.float32))
    assert np.issubdtype(read_labels(tmp_path / "g.tif").dtype, np.integer)
    assert not list(tmp_path.glob(".*"))


def test_png_label_map(tmp_path):
    lab = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    Image.fromarray(lab).save(tmp_path / "l.png")
    assert np.array_equal(read_labels(tmp_path / "l.png"), lab)


def test_volume_round_trip_keeps_affine_and_spacing(tmp_path):
    vol = RNG.random((5, 6, 7)).astype(np.float32)
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = [10, -4, 3]
    write_volume(tmp_path / "v.nii.gz", vol, affine)
    read = read_volume(tmp_path / "v.nii.gz")
    assert isinstance(read, Volume) and read.path == tmp_path / "v.nii.gz"
    assert np.array_equal(read.array, vol) and np.allclose(read.affine, affine)
    assert read.spacing == pytest.approx((0.5, 0.7, 2.0))
    write_volume(tmp_path / "m.nii.gz", (vol > 0.5), read)  # like=Volume keeps its geometry
    labels = read_label(tmp_path / "m.nii.gz")
    assert labels.array.dtype == np.uint8 and np.array_equal(labels.array, vol > 0.5)
    assert np.allclose(labels.affine, affine) and labels.spacing == pytest.approx((0.5, 0.7, 2.0))


def test_nifti_label_map_via_read_labels(tmp_path):
    lab = np.zeros((4, 5, 6), np.int16)
    lab[1:3, 1:3, 1:3], lab[0, 0, 0] = 3, 7
    write_volume(tmp_path / "l.nii.gz", lab, np.eye(4))
    out = read_labels(tmp_path / "l.nii.gz")
    assert np.issubdtype(out.dtype, np.integer) and np.array_equal(out, lab)
    write_volume(tmp_path / "e.nii.gz", np.zeros((4, 5, 6), np.uint8), np.eye(4))
    assert read_labels(tmp_path / "e.nii.gz").max() == 0  # empty label maps are valid here
    write_volume(tmp_path / "neg.nii.gz", -lab, np.eye(4))
    with pytest.raises(InputError, match=r"neg\.nii\.gz: label has negative values"):
        read_labels(tmp_path / "neg.nii.gz")


def test_bad_nifti_is_one_line_error_naming_the_file(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    for reader in (read_volume, read_label, read_labels):
        with pytest.raises(InputError, match=r"bad\.nii\.gz: unreadable NIfTI") as info:
            reader(tmp_path / "bad.nii.gz")
        assert "\n" not in str(info.value)


def test_real_monuseg_image_and_labels(shared_data):
    image = read_image(shared_data / "monuseg/train/images/TCGA-21-5784-01Z-00-DX1.png")
    labels = read_labels(shared_data / "monuseg/train/labels/TCGA-21-5784-01Z-00-DX1.tif")
    assert image.shape == (1000, 1000, 3) and image.dtype == np.uint8
    assert labels.shape == (1000, 1000) and labels.max() == len(np.unique(labels)) - 1


def test_bmp_and_bigtiff_suffixes_are_read(tmp_path):
    import tifffile
    from PIL import Image

    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    tifffile.imwrite(tmp_path / "b.btf", rgb, bigtiff=True)
    assert np.array_equal(read_image(tmp_path / "a.bmp"), rgb)
    assert np.array_equal(read_image(tmp_path / "b.btf"), rgb)
