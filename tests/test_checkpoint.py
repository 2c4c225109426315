"""Checkpoints load strictly by official key names; every bad file fails with one line naming it."""

from __future__ import annotations

import pytest
import torch

from promptsam.errors import CheckpointError
from promptsam.models import build_sam
from promptsam.models.registry import find_checkpoint, list_models


@pytest.fixture(scope="module")
def small_sam():
    return build_sam("vit_b", image_size=256)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory, small_sam):
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_01ec64.pth"
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v for k, v in small_sam.state_dict().items()
    }
    torch.save(state, path)
    return path


def assert_one_line_error(call, path, *fragments):
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_official_raw_state_dict_loads_and_wrapped_too(good_file, tmp_path):
    model = build_sam("vit_b", image_size=256, checkpoint=good_file)
    saved = torch.load(good_file, weights_only=True)
    assert torch.equal(model.state_dict()["image_encoder.pos_embed"], saved["image_encoder.pos_embed"])
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model_state_dict": saved, "epoch": 3}, wrapped)  # SAM-Med3D / training-checkpoint style
    model2 = build_sam("vit_b", image_size=256, checkpoint=wrapped)
    assert torch.equal(
        model2.state_dict()["mask_decoder.iou_token.weight"], saved["mask_decoder.iou_token.weight"]
    )


def test_truncated_file(good_file, tmp_path):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good_file.read_bytes()[: good_file.stat().st_size // 2])
    assert_one_line_error(lambda: build_sam("vit_b", image_size=256, checkpoint=bad), bad, "not a readable")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    assert_one_line_error(lambda: build_sam("vit_b", image_size=256, checkpoint=bad), bad, "not a readable")


def test_missing_file(tmp_path):
    bad = tmp_path / "nope.pth"
    assert_one_line_error(lambda: build_sam("vit_b", checkpoint=bad), bad, "no such checkpoint")


def test_wrong_architecture_names_first_mismatching_keys(good_file, small_sam):
    before = {k: v.clone() for k, v in small_sam.state_dict().items()}
    large = build_sam("vit_t", image_size=256)
    assert_one_line_error(
        lambda: __import__("promptsam").models.load_checkpoint(large, good_file),
        good_file,
        "does not fit vit_t",
        "missing keys",
        "unexpected keys",
    )
    # vit_b file into a vit_l model: same key names for the first blocks, other shapes
    with torch.device("meta"):  # shapes only: the load must fail before any copy
        vit_l = build_sam("vit_l", image_size=256)
    assert_one_line_error(
        lambda: __import__("promptsam").models.load_checkpoint(vit_l, good_file),
        good_file,
        "shape mismatch",
        "image_encoder.",
    )
    # nothing half-loaded into the model whose load failed
    assert all(torch.equal(v, small_sam.state_dict()[k]) for k, v in before.items())


def test_renamed_key_fails_and_leaves_model_untouched(good_file, tmp_path):
    state = torch.load(good_file, weights_only=True)
    state["mask_decoder.iou_token.weight_renamed"] = state.pop("mask_decoder.iou_token.weight")
    bad = tmp_path / "renamed.pth"
    torch.save(state, bad)
    model = build_sam("vit_b", image_size=256)
    before = model.state_dict()["image_encoder.pos_embed"].clone()
    assert_one_line_error(
        lambda: __import__("promptsam").models.load_checkpoint(model, bad),
        bad,
        "missing keys: mask_decoder.iou_token.weight",
        "unexpected keys: mask_decoder.iou_token.weight_renamed",
    )
    assert torch.equal(model.state_dict()["image_encoder.pos_embed"], before)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, bad)
    assert_one_line_error(lambda: build_sam("vit_b", image_size=256, checkpoint=bad), bad, "not a readable")


def test_registry_and_checkpoint_search(tmp_path, monkeypatch, good_file):
    names = [m.name for m in list_models()]
    assert names[:4] == ["vit_b", "vit_l", "vit_h", "vit_t"]
    monkeypatch.setenv("PROMPTSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PROMPTSAM_CHECKPOINTS", str(good_file.parent))
    assert find_checkpoint("vit_b") == good_file
    with pytest.raises(CheckpointError, match="mobile_sam.pt not found in"):
        find_checkpoint("vit_t")
    with pytest.raises(CheckpointError, match="unknown model 'vit_x'"):
        build_sam("vit_x")


def test_builders_refuse_the_other_dimension_in_one_line():
    from promptsam.errors import CheckpointError
    from promptsam.models import build_sam
    from promptsam.models.sam3d.build import build_sam3d

    with pytest.raises(CheckpointError, match="'sam_med3d' is not a 2D SAM"):
        build_sam("sam_med3d")
    with pytest.raises(CheckpointError, match="'vit_b' is not a 3D model"):
        build_sam3d("vit_b")
