"""Presets as typed configs: overrides, number parsing, and one-line errors."""

from __future__ import annotations

import pytest

from promptsam.errors import PromptSAMError
from promptsam.methods import msam, promptnucseg


def test_overrides_parse_numbers_written_without_a_dot():
    cfg = promptnucseg.load_config("promptnucseg_cpu", {"prompter.lr": "3e-4", "training.max_minutes": 35,
                                                          "segmentor.scale": 2})
    assert cfg.prompter.lr == pytest.approx(3e-4) and isinstance(cfg.prompter.lr, float)
    assert cfg.training.max_minutes == 35.0 and cfg.segmentor.scale == 2.0


def test_bad_values_and_unknown_keys_are_one_line_errors():
    with pytest.raises(PromptSAMError, match=r"prompter\.lr: expected a number, got 'fast'"):
        promptnucseg.load_config("promptnucseg_cpu", {"prompter.lr": "fast"})
    with pytest.raises(PromptSAMError, match="unknown setting"):
        msam.load_config("msam_cpu", {"clicks.rounds": 3})


def test_both_msam_presets_load():
    paper, cpu = msam.load_config("msam_paper"), msam.load_config("msam_cpu")
    assert paper.network.arch == "sam_med3d" and paper.network.lora_rank == 4 and paper.clicks.train_rounds == 11
    assert cpu.network.arch == "sam_med3d_small" and cpu.clicks.test_rounds == 10


def test_precisions_take_promptsams_names_and_reject_others_on_one_line():
    """training.precision reads fp32 / bf16 / auto as inference.precision does (and Lightning's own flags);
    anything else, here or in inference settings, fails when the config is built, not inside the trainer."""
    from promptsam.training import lightning_precision

    assert lightning_precision("fp32") == "32-true" and lightning_precision("bf16") == "bf16-mixed"
    assert lightning_precision("32-true") == "32-true"
    assert promptnucseg.load_config("promptnucseg_cpu", {"training.precision": "fp32"}).training.precision == "fp32"
    with pytest.raises(PromptSAMError, match="training.precision='half'"):
        promptnucseg.load_config("promptnucseg_cpu", {"training.precision": "half"})
    with pytest.raises(PromptSAMError, match="inference.precision='half'"):
        promptnucseg.load_config("promptnucseg_cpu", {"inference.precision": "half"})
    with pytest.raises(PromptSAMError, match="inference.overlap=256: must be smaller than the SAM window"):
        promptnucseg.load_config("promptnucseg_cpu", {"inference.overlap": 256})


def test_segment_settings_read_numbers_as_train_settings_do():
    """`segment --set` goes through the same typed config building as `train --set`: "5e-1" (a string to YAML 1.1)
    is a number, a word where a number or flag is meant is a one-line error naming the setting."""
    from promptsam.cli.segment import with_settings
    from promptsam.training import lightning_precision

    config = promptnucseg.load_config("promptnucseg_cpu")
    assert with_settings(config, ["inference.nms_iou=5e-1"]).inference.nms_iou == 0.5
    with pytest.raises(PromptSAMError, match=r"inference\.overlap: expected int, got 'abc'"):
        with_settings(config, ["inference.overlap=abc"])
    with pytest.raises(PromptSAMError, match=r"inference\.one_piece: expected bool, got 1"):
        with_settings(config, ["inference.one_piece=1"])
    assert lightning_precision("fp16") == "16-mixed"
