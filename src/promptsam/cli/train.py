"""`promptsam train METHOD`: train a method's models from a dataset folder into a resumable run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from promptsam.config import parse_settings


def _run_arguments(p: argparse.ArgumentParser, *, data_help: str, preset: str, preset_help: str,
                   stages: list[str]) -> None:
    """The options every `train METHOD` shares: data, run folder, preset and overrides, budget, threads."""
    p.add_argument("--data", action="append", required=True, help=data_help)
    p.add_argument("--val", action="append", default=[], help="validation folder(s)")
    p.add_argument("--preset", default=None, help=f"{preset_help} (default {preset})")
    p.set_defaults(default_preset=preset)
    p.add_argument("--out", required=True, help="run folder (re-running resumes from it)")
    p.add_argument("--stage", choices=[*stages, "both"], default="both", help="stage to train (both: all of them)")
    p.add_argument("--max-minutes", type=float, default=None, help="time budget per stage (overrides the preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value, e.g. --set segmentor.lr=1e-4 (YAML value syntax)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a method (promptnucseg, msam) on your data")
    methods = parser.add_subparsers(dest="method", metavar="METHOD", required=True)
    p = methods.add_parser("promptnucseg", help="PromptNucSeg: point prompter + SAM segmentor")
    _run_arguments(p, data_help="dataset folder in the uniform layout (repeat for several); known development "
                                "datasets keep their frozen validation cases out unless --val is given",
                   preset="promptnucseg_cpu", preset_help="preset name or YAML file",
                   stages=["prompter", "segmentor", "centring"])
    p.add_argument("--sam-checkpoint", default=None, help="official SAM/MobileSAM file to start the segmentor from")
    p.add_argument("--from", dest="from_model", metavar="MODEL", default=None,
                   help="fine-tune a trained model (a shipped name such as default, or a model file): a new run "
                        "starts from its weights and settings instead of a preset, at the fine-tuning rate "
                        "(lr 1e-4, cosine over 40 epochs of 64 crops); --set changes them")
    p.add_argument("--peft", choices=["lora"], default=None, help="parameter-efficient fine-tuning of the encoder")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (with --peft lora)")
    p.set_defaults(func=run)

    m = methods.add_parser("msam", help="M-SAM: 3D lesions (SAM-Med3D + MEA + click refinement) and the lesion "
                                        "detector of the automatic mode")
    _run_arguments(m, data_help="3D dataset folder: nnU-Net style (imagesTr/labelsTr) or the uniform layout "
                                "(repeatable)",
                   preset="msam_cpu", preset_help="preset name (msam_paper, msam_cpu) or YAML file",
                   stages=["detector", "segmentor"])
    m.add_argument("--sam-checkpoint", default=None, help="official sam_med3d_turbo.pth to start M-SAM from")
    m.add_argument("--rank", type=int, default=None, help="LoRA rank on the encoder (0 = train the whole encoder)")
    m.add_argument("--loss-rounds", choices=["all", "last"], default=None,
                   help="loss on every click round (released code) or the last one (rebuttal)")
    m.add_argument("--detector-from", metavar="MODEL", default=None,
                   help="a new run takes the lesion detector of this M-SAM model file; its M-SAM network starts fresh")
    m.set_defaults(func=run_msam)


def _set_values(args: argparse.Namespace) -> dict:
    """--set KEY=VALUE pairs and --max-minutes as dotted config overrides."""
    out = parse_settings(args.set)
    if args.max_minutes is not None:
        out["training.max_minutes"] = args.max_minutes
    return out


def _overrides(args: argparse.Namespace) -> dict:
    out = _set_values(args)
    if args.sam_checkpoint:
        out["segmentor.checkpoint"] = args.sam_checkpoint
    if args.peft:
        out["segmentor.peft"] = args.peft
    if args.rank is not None:
        out["segmentor.lora_rank"] = args.rank
    return out


def _run_config(args: argparse.Namespace, load_config, overrides: dict, *, start=None):
    """The run's config: the preset (or `start(overrides)`, a model's settings) with overrides, or, when resuming,
    the config the run started with."""
    import torch

    from promptsam.config import to_dict
    from promptsam.io.atomic import atomic_path

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    config = start(overrides) if start is not None else load_config(args.preset or args.default_preset, overrides)
    saved = out / "config.yaml"
    if saved.is_file():  # resuming: the run keeps the config it started with, plus explicit overrides
        config = load_config(saved, overrides)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(saved) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return config, out


def run(args: argparse.Namespace) -> int:
    from promptsam.errors import PromptSAMError
    from promptsam.methods.promptnucseg import config_of_model, load_config, train_promptnucseg
    from promptsam.pretrained import resolve_model

    source = start = None
    if args.from_model is not None:
        for option, value in (("--preset", args.preset), ("--sam-checkpoint", args.sam_checkpoint)):
            if value is not None:
                raise PromptSAMError(f"{option} and --from both say where the run starts: give one of them")
        source = resolve_model(args.from_model)
        start = lambda overrides: config_of_model(source, overrides)  # noqa: E731
    config, out = _run_config(args, load_config, _overrides(args), start=start)
    centring = ("centring",) if config.prompter.centring else ()
    stages = ("prompter", "segmentor", *centring) if args.stage == "both" else (args.stage,)
    summary = train_promptnucseg(config, args.data, args.val, out, stages=stages, progress=not args.no_progress,
                                 start_from=source)
    print(json.dumps(summary, indent=2))
    return 0


def run_msam(args: argparse.Namespace) -> int:
    from promptsam.methods.msam import load_config, train_msam

    overrides = _set_values(args)
    if args.sam_checkpoint:
        overrides["network.checkpoint"] = args.sam_checkpoint
    if args.rank is not None:
        overrides["network.lora_rank"] = args.rank
    if args.loss_rounds:
        overrides["clicks.loss_rounds"] = args.loss_rounds
    config, out = _run_config(args, load_config, overrides)
    stages = ("detector", "segmentor") if args.stage == "both" else (args.stage,)
    summary = train_msam(config, args.data, args.val, out, stages=stages, progress=not args.no_progress,
                         detector_from=args.detector_from)
    print(json.dumps(summary, indent=2))
    return 0
