"""`promptsam train METHOD`: train a method's models from a dataset folder into a resumable run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from promptsam.errors import PromptSAMError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a method (promptnucseg) on your data")
    methods = parser.add_subparsers(dest="method", metavar="METHOD", required=True)
    p = methods.add_parser("promptnucseg", help="PromptNucSeg: point prompter + SAM segmentor")
    p.add_argument("--data", action="append", required=True,
                   help="dataset folder in the uniform layout (repeat for several); known development datasets "
                        "keep their frozen validation cases out unless --val is given")
    p.add_argument("--val", action="append", default=[], help="validation folder(s)")
    p.add_argument("--preset", default="promptnucseg_cpu", help="preset name or YAML file")
    p.add_argument("--out", required=True, help="run folder (re-running resumes from it)")
    p.add_argument("--stage", choices=["prompter", "segmentor", "both"], default="both")
    p.add_argument("--max-minutes", type=float, default=None, help="time budget per stage (overrides the preset)")
    p.add_argument("--sam-checkpoint", default=None, help="official SAM/MobileSAM file to start the segmentor from")
    p.add_argument("--peft", choices=["lora"], default=None, help="parameter-efficient fine-tuning of the encoder")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (with --peft lora)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value, e.g. --set segmentor.lr=1e-4 (YAML value syntax)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    for item in args.set:
        if "=" not in item:
            raise PromptSAMError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    if args.max_minutes is not None:
        out["training.max_minutes"] = args.max_minutes
    if args.sam_checkpoint:
        out["segmentor.checkpoint"] = args.sam_checkpoint
    if args.peft:
        out["segmentor.peft"] = args.peft
    if args.rank is not None:
        out["segmentor.lora_rank"] = args.rank
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from promptsam.config import to_dict
    from promptsam.io.atomic import atomic_path
    from promptsam.methods.promptnucseg import load_config, train_promptnucseg

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    config = load_config(args.preset, _overrides(args))
    saved = out / "config.yaml"
    if saved.is_file():  # resuming: the run keeps the config it started with, plus explicit overrides
        config = load_config(saved, _overrides(args))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(saved) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    stages = ("prompter", "segmentor") if args.stage == "both" else (args.stage,)
    summary = train_promptnucseg(config, args.data, args.val, out, stages=stages, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0
