"""The `promptsam` command: info, demo, and one-line errors."""

from __future__ import annotations

import numpy as np

from promptsam.cli.main import main
from promptsam.io.images import read_labels


def test_info_lists_models_and_checkpoint_folders(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTSAM_CHECKPOINTS", str(tmp_path))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for needle in ("torch", "threads", "vit_b", "vit_t", "mobile_sam.pt", str(tmp_path)):
        assert needle in out


def test_demo_with_random_sam_writes_labels_and_overlay(tmp_path, capsys):
    assert main(["demo", "--random-sam", "--image-size", "256", "-o", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out
    labels = read_labels(tmp_path / "ihc.labels.tif")
    assert labels.shape == (512, 512) and labels.max() > 10
    assert set(np.unique(labels)) == set(range(int(labels.max()) + 1))  # ids 0..K, no gaps
    assert (tmp_path / "ihc.overlay.png").is_file()


def test_unknown_model_is_one_line_error(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "none.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "none.pt" in err[0]
    assert not (tmp_path / "o").exists()


def test_empty_folder_is_one_line_error(tmp_path, capsys):
    code = main(["segment", str(tmp_path), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(tmp_path) in err[0] and "no images" in err[0]


def test_every_slide_format_is_an_input_and_keeps_its_stem(tmp_path):
    from promptsam.cli.segment import IMAGE_SUFFIXES, expand_inputs, stem
    from promptsam.io.images import IMAGE_SUFFIXES as WHOLE_IMAGE_SUFFIXES
    from promptsam.io.slides import OPENSLIDE_SUFFIXES, TIFF_SUFFIXES

    assert set(OPENSLIDE_SUFFIXES) | set(TIFF_SUFFIXES) | set(WHOLE_IMAGE_SUFFIXES) <= set(IMAGE_SUFFIXES)
    for name in ("a.ome.tif", "b.svslide", "c.vms", "d.btf", "e.bmp", "f.notes.txt"):
        (tmp_path / name).touch()
    found = [p.name for p in expand_inputs([str(tmp_path)])]
    assert found == ["a.ome.tif", "b.svslide", "c.vms", "d.btf", "e.bmp"]
    assert [stem(tmp_path / n) for n in found] == ["a", "b", "c", "d", "e"]
