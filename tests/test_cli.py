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
