"""Large images: slide reading by region, block planning, seam-free block-wise segmentation, streamed outputs."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from promptsam.cli.main import main
from promptsam.errors import InputError
from promptsam.inference.large_image import plan_blocks, segment_slide, tissue_mask
from promptsam.io.images import read_labels
from promptsam.io.slides import ArraySlide, open_slide
from promptsam.methods.promptnucseg import NucleusSegmentation


def _disc_image(shape=(300, 420), n=60, seed=0):
    """White background, dark discs of radius 4-9 (some touching), like nuclei on a brightfield slide."""
    rng = np.random.default_rng(seed)
    img = np.full(shape + (3,), 240, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        cy, cx, r = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10), rng.integers(4, 10)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (90, 40, 120)
    return img


class ThresholdModel:
    """A stand-in nucleus model: dark connected blobs are nuclei (so the whole-image answer is known exactly)."""

    config = SimpleNamespace(inference=SimpleNamespace(nucleus_diameter=None), segmentor=SimpleNamespace(scale=1.0),
                             prompter=SimpleNamespace(num_classes=1), class_names=("nucleus",))

    def segment(self, image, *, fast=False, scale=None, points=None, point_classes=None):
        labels, n = ndimage.label(np.asarray(image)[..., 0] < 128)
        if points is not None:  # given points: only the blobs they fall on
            x, y = np.rint(points).astype(int).T
            kept = np.unique(labels[y, x])
            lut = np.zeros(n + 1, np.int64)
            lut[kept[kept > 0]] = np.arange(1, int((kept > 0).sum()) + 1)
            labels, n = lut[labels], int((kept > 0).sum())
        centres = np.array(ndimage.center_of_mass(labels > 0, labels, np.arange(1, n + 1))).reshape(-1, 2)
        return NucleusSegmentation(labels=labels.astype(np.uint32), classes=None, points=centres[:, ::-1],
                                   point_classes=np.ones(n, np.int64), scores=np.linspace(0.5, 1, n),
                                   class_names=("nucleus",))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two label maps draw the same instances (ids may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_blocks_tile_the_image_once_and_regions_hold_their_core():
    shape = (1000, 750)
    blocks = plan_blocks(shape, block=256, halo=40)
    cover = np.zeros(shape, int)
    for b in blocks:
        y0, x0, y1, x1 = b.core
        cover[y0:y1, x0:x1] += 1
        ry0, rx0, ry1, rx1 = b.region
        assert 0 <= ry0 <= y0 and 0 <= rx0 <= x0 and y1 <= ry1 <= shape[0] and x1 <= rx1 <= shape[1]
        assert ry0 == max(0, y0 - 40) and rx1 == min(shape[1], x1 + 40)
    assert (cover == 1).all() and len(blocks) == 4 * 3
    from promptsam.cli import segment as cli
    from promptsam.inference import large_image

    assert (cli.DEFAULT_BLOCK, cli.DEFAULT_HALO) == (large_image.DEFAULT_BLOCK, large_image.DEFAULT_HALO)


def test_block_wise_segmentation_equals_the_whole_image_without_seams():
    image = _disc_image()
    whole = ThresholdModel().segment(image).labels
    result = segment_slide(ThresholdModel(), ArraySlide(image), block=64, halo=24, tissue=False)
    assert _same_partition(whole, result.labels)  # nothing cut, doubled or lost at the 64-px block borders
    assert result.labels.max() == result.count == whole.max()
    # ids are owned by the block holding the nucleus' centroid
    for b, first, last in result.blocks:
        y0, x0, y1, x1 = b.core
        for k in range(first, last + 1):
            cy, cx = ndimage.center_of_mass(result.labels == k)
            assert y0 <= cy < y1 and x0 <= cx < x1
    # a halo smaller than the nuclei cuts them: the guard above is not vacuous
    cut = segment_slide(ThresholdModel(), ArraySlide(image), block=64, halo=2, tissue=False)
    assert not _same_partition(whole, cut.labels)


def test_blocks_run_on_an_executor_give_the_same_result():
    from concurrent.futures import ThreadPoolExecutor

    image = _disc_image()
    here = segment_slide(ThresholdModel(), ArraySlide(image), block=64, halo=24, tissue=False)
    seen = []
    with ThreadPoolExecutor(3) as pool:
        there = segment_slide(ThresholdModel(), ArraySlide(image), block=64, halo=24, tissue=False, executor=pool,
                              pending=2, progress=lambda it: (seen.append(len(it)), it)[1])
    np.testing.assert_array_equal(here.labels, there.labels)  # written in block order whatever finishes first
    np.testing.assert_array_equal(here.points, there.points)
    assert here.blocks == there.blocks and seen == [len(here.blocks)]


def test_blocks_run_on_a_dask_cluster_give_the_same_result():
    distributed = pytest.importorskip("distributed")
    image = _disc_image((200, 260))
    here = segment_slide(ThresholdModel(), ArraySlide(image), block=64, halo=24, tissue=False)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        there = segment_slide(ThresholdModel(), ArraySlide(image), block=64, halo=24, tissue=False,
                              executor=client.get_executor())
    np.testing.assert_array_equal(here.labels, there.labels)


def test_an_interrupted_run_resumes_from_its_finished_blocks(tmp_path):
    from promptsam.inference.large_image import BlockCache

    class Flaky(ThresholdModel):
        """Fails on its fourth block, like a run killed half-way; counts the blocks it segments."""

        def __init__(self, fail_at=None):
            self.calls, self.fail_at = 0, fail_at

        def segment(self, image, **kw):
            self.calls += 1
            if self.calls == self.fail_at:
                raise KeyboardInterrupt
            return super().segment(image, **kw)

    image = _disc_image()
    whole = segment_slide(ThresholdModel(), ArraySlide(image), block=128, halo=24, tissue=False)
    manifest = {"image": "discs", "block": 128}
    with pytest.raises(KeyboardInterrupt):
        segment_slide(Flaky(fail_at=4), ArraySlide(image), block=128, halo=24, tissue=False,
                      cache=BlockCache(tmp_path / "blocks", manifest))
    cache = BlockCache(tmp_path / "blocks", manifest)
    assert len(cache) == 3
    again = Flaky()
    resumed = segment_slide(again, ArraySlide(image), block=128, halo=24, tissue=False, cache=cache)
    assert again.calls == len(whole.blocks) - 3
    np.testing.assert_array_equal(resumed.labels, whole.labels)
    np.testing.assert_array_equal(resumed.points, whole.points)
    assert len(BlockCache(tmp_path / "blocks", {**manifest, "block": 256})) == 0  # another run: not mixed in


def test_blocks_without_tissue_are_skipped():
    image = np.full((512, 512, 3), 245, np.uint8)
    image[40:120, 40:120] = _disc_image((80, 80), n=6, seed=1)
    mask = tissue_mask(image[::4, ::4])
    assert mask[15, 15] and not mask[100, 100]
    result = segment_slide(ThresholdModel(), ArraySlide(image), block=128, halo=16)
    assert result.skipped == 16 - 1 and result.labels[:128, :128].max() > 0
    assert tissue_mask(np.full((64, 64, 3), 200, np.uint8)).all()  # no contrast: nothing skipped


def test_points_in_regions_finds_each_point_in_every_region_holding_it():
    from promptsam.inference.large_image import points_in_regions

    rng = np.random.default_rng(0)
    points = rng.uniform(-0.4, [419.4, 299.4], (500, 2)).astype(np.float32)
    blocks = plan_blocks((300, 420), block=64, halo=24)
    x, y = np.rint(points).T
    for b, held in zip(blocks, points_in_regions(points, blocks), strict=True):
        ry0, rx0, ry1, rx1 = b.region
        np.testing.assert_array_equal(held, np.flatnonzero((x >= rx0) & (x < rx1) & (y >= ry0) & (y < ry1)))


def test_given_points_are_drawn_block_by_block_and_only_blocks_with_points_run():
    """Points of another tool on a large image: the same nuclei as one pass with those points, no seams, and the
    blocks holding no point are not segmented at all."""
    from promptsam.data.targets import nucleus_points

    image = _disc_image()
    model = ThresholdModel()
    every, _ = nucleus_points(model.segment(image).labels)
    points = every[(every[:, 0] < 200) | (every[:, 1] < 64)]  # left part and top rows of the image only
    whole = model.segment(image, points=points).labels
    assert 0 < whole.max() < model.segment(image).labels.max()
    calls = []
    counting = SimpleNamespace(config=model.config,
                               segment=lambda im, **kw: (calls.append(1), model.segment(im, **kw))[1])
    result = segment_slide(counting, ArraySlide(image), block=64, halo=24, points=points)
    assert _same_partition(whole, result.labels) and result.count == whole.max()
    blocks = plan_blocks(image.shape[:2], block=64, halo=24)
    with_points = [b for b in blocks if any(b.region[1] <= x < b.region[3] and b.region[0] <= y < b.region[2]
                                            for x, y in np.rint(points))]
    assert len(calls) == len(with_points) < len(blocks) and result.skipped == len(blocks) - len(with_points)


def test_tiff_slide_reads_regions_thumbnails_and_rejects_bad_files(tmp_path):
    image = _disc_image((600, 500))
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib", photometric="rgb")
    with open_slide(path) as slide:
        assert slide.shape == (600, 500) and slide.channels == 3
        np.testing.assert_array_equal(slide.read(100, 200, 150, 130), image[100:250, 200:330])
        edge = slide.read(550, 450, 100, 100)  # runs off the image: zero-filled
        np.testing.assert_array_equal(edge[:50, :50], image[550:, 450:])
        assert not edge[50:].any() and not edge[:, 50:].any()
        thumb, factor = slide.thumbnail(max_side=128)
        assert max(thumb.shape[:2]) <= 128 and factor == 5
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, image[..., 0], tile=(128, 128))
    with open_slide(grey) as slide:
        assert slide.channels == 1 and slide.read(0, 0, 10, 10).shape == (10, 10)
    four = tmp_path / "four.tif"
    tifffile.imwrite(four, np.zeros((64, 64, 4), np.uint8), photometric="rgb", extrasamples=["unassalpha"])
    truncated = tmp_path / "cut.tif"
    truncated.write_bytes(path.read_bytes()[:300])
    for bad in (four, truncated, tmp_path / "missing.svs"):
        with pytest.raises(InputError) as err:
            with open_slide(bad) as slide:
                slide.read(0, 0, 64, 64)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_segment_cli_in_blocks_writes_consistent_outputs(tmp_path, shared_data, capsys):
    shapely = pytest.importorskip("shapely.geometry")
    from promptsam.data.splits import split_names
    from promptsam.io import read_image
    from promptsam.metrics.instance import score_instances
    from promptsam.pretrained import load_model

    name = split_names("monuseg", root=shared_data)["val"][0]
    image = read_image(shared_data / "monuseg" / "train" / "images" / f"{name}.png")[:384, :448]
    path = tmp_path / "tissue.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression="jpeg", photometric="rgb")
    out = tmp_path / "out"
    code = main(["segment", str(path), "-o", str(out), "--block-size", "192", "--halo", "64", "--fast",
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert "blocks of 192 px" in capsys.readouterr().out
    labels = read_labels(out / "tissue.labels.tif")
    assert labels.shape == image.shape[:2] and labels.max() > 20
    ids = set(np.unique(labels[labels > 0]).tolist())
    features = json.loads((out / "tissue.geojson").read_text())["features"]
    assert {int(f["properties"]["measurements"]["Label"]) for f in features} == ids
    assert len({f["id"] for f in features}) == len(features)  # QuPath object ids unique across blocks
    for f in features:
        assert shapely.shape(f["geometry"]).is_valid
    with (out / "tissue.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["id"]) for r in rows} == ids
    assert (out / "tissue.overlay.png").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # memory maps and temp files removed
    # block-wise agrees with one pass over the whole image
    whole = load_model("default", device="cpu").segment(read_image(path), fast=True)
    assert score_instances(whole.labels, labels)["dq"] > 0.8
    # points of another tool (here the ground truth's, as a label image): only blocks holding points run, and the
    # nuclei are those one pass draws from the same points
    from promptsam.data.targets import nucleus_points
    from promptsam.io.images import write_labels

    truth = read_labels(shared_data / "monuseg" / "train" / "labels" / f"{name}.tif")[:384, :448]
    truth[:, 192:] = 0  # seeds in the left blocks only
    seeds = write_labels(tmp_path / "seeds.tif", truth)
    code = main(["segment", str(path), "-o", str(tmp_path / "seeded"), "--block-size", "192", "--device", "cpu",
                 "--points", str(seeds)])
    assert code == 0, capsys.readouterr().err
    assert "(2 without points skipped)" in capsys.readouterr().out
    one_pass = load_model("default", device="cpu").segment(read_image(path), points=nucleus_points(truth)[0])
    seeded = read_labels(tmp_path / "seeded" / "tissue.labels.tif")
    assert seeded[:, 256:].max() == 0 and score_instances(one_pass.labels, seeded)["dq"] > 0.8
    # a given nucleus diameter: every block at the one magnification it sets (40 px target / 22 px)
    code = main(["segment", str(path), "-o", str(tmp_path / "sized"), "--block-size", "192", "--device", "cpu",
                 "--points", str(seeds), "--diameter", "22"])
    assert code == 0, capsys.readouterr().err
    assert "median magnification 1.82" in capsys.readouterr().out
    sized = load_model("default", device="cpu").segment(read_image(path), points=nucleus_points(truth)[0],
                                                        diameter=22)
    assert score_instances(sized.labels, read_labels(tmp_path / "sized" / "tissue.labels.tif"))["dq"] > 0.8
    # blocks in two worker processes (model loaded by name, slide opened from its path there): the same nuclei
    code = main(["segment", str(path), "-o", str(tmp_path / "workers"), "--block-size", "192", "--fast",
                 "--device", "cpu", "--workers", "2"])
    assert code == 0, capsys.readouterr().err
    assert score_instances(labels, read_labels(tmp_path / "workers" / "tissue.labels.tif"))["pq"] > 0.95


def test_openslide_reader_matches_the_tiff_reader(tmp_path):
    """The OpenSlide path (.ndpi, .mrxs, ... in practice) on a generic tiled TIFF, which OpenSlide also reads."""
    pytest.importorskip("openslide")
    from promptsam.io.slides import OpenSlideSlide

    image = _disc_image((600, 500))
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib", photometric="rgb")
    with OpenSlideSlide(path) as slide, open_slide(path) as tiff:
        assert slide.shape == tiff.shape == (600, 500) and slide.channels == 3
        np.testing.assert_array_equal(slide.read(100, 200, 150, 130), image[100:250, 200:330])
        np.testing.assert_array_equal(slide.read(550, 450, 100, 100), tiff.read(550, 450, 100, 100))
        thumb, factor = slide.thumbnail(max_side=128)
        assert max(thumb.shape[:2]) <= 128 and thumb.shape[2] == 3 and factor == pytest.approx(600 / thumb.shape[0])
        result = segment_slide(ThresholdModel(), slide, block=128, halo=24, tissue=False)
    whole = ThresholdModel().segment(image).labels
    assert _same_partition(whole, result.labels)
    with pytest.raises(InputError, match="unreadable slide"):
        OpenSlideSlide(tmp_path / "missing.ndpi")
