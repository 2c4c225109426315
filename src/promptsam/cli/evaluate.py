"""`promptsam evaluate`: score a folder of predicted label maps against ground truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from promptsam.errors import InputError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `evaluate` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted label maps against ground truth",
        description=(
            "Match files by stem (<stem>.labels.tif, <stem>.tif, <stem>.png, <stem>.nii.gz) and score them: "
            "2D instance maps with PQ/AJI/Dice, 3D volumes with Dice/IoU/HD95/ASD. "
            "--gt may be a split folder of the uniform layout (with labels/ and classes/ inside)."
        ),
    )
    parser.add_argument("--pred", required=True, type=Path, metavar="DIR", help="predicted label maps")
    parser.add_argument("--gt", required=True, type=Path, metavar="DIR", help="ground-truth label maps")
    parser.add_argument("--classes", type=Path, metavar="DIR", help="ground-truth class maps")
    parser.add_argument("--pred-classes", type=Path, metavar="DIR", help="predicted class maps (enables mPQ)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write per-image rows and means as JSON")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="write per-image rows and means as CSV")
    parser.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        metavar="MM",
        help="3D voxel spacing (1 or 3 values); default: from the ground-truth NIfTI header",
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="skip files present on one side only instead of failing"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Score the folders, print the table and write the requested reports."""
    from promptsam.evaluation import evaluate_folders, format_table, summarize, write_csv, write_json

    if args.spacing is not None and len(args.spacing) not in (1, 3):
        raise InputError(f"--spacing takes 1 or 3 values, got {len(args.spacing)}")
    rows = evaluate_folders(
        args.pred,
        args.gt,
        gt_classes_dir=args.classes,
        pred_classes_dir=args.pred_classes,
        spacing=args.spacing,
        allow_missing=args.allow_missing,
        on_note=lambda note: print(f"note: {note}", file=sys.stderr),
    )
    summary = summarize(rows)
    print(format_table(rows, summary))
    meta = {"pred": str(args.pred), "gt": str(args.gt), "n_images": len(rows)}
    if args.json:
        write_json(args.json, rows, meta=meta)
        print(f"wrote {args.json}")
    if args.csv:
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    return 0
