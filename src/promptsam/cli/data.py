"""`promptsam data`: check a dataset folder, or convert a public dataset to the uniform layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from promptsam.errors import InputError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `data check` and `data convert`."""
    parser = subparsers.add_parser("data", help="check or convert datasets", description=__doc__)
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")

    check = sub.add_parser(
        "check",
        help="verify image/label pairs, shapes, ids, dtypes, class maps and affines",
        description="Check a data folder (data root, dataset, split folder or nnU-Net raw folder); "
        "exit 1 if any problem is found.",
    )
    check.add_argument("dir", type=Path, metavar="DIR")
    check.add_argument("--strict", action="store_true", help="treat warnings as problems")
    check.add_argument("--quiet", action="store_true", help="print only problems and the summary")
    check.set_defaults(func=run, data_command="check")

    convert = sub.add_parser(
        "convert",
        help="convert a public dataset to the uniform layout",
        description="Convert SRC (in the source format FORMAT) into the uniform layout at DST. "
        "Run `promptsam data convert --list` for the formats.",
    )
    convert.add_argument("format", nargs="?", metavar="FORMAT")
    convert.add_argument("src", nargs="?", type=Path, metavar="SRC")
    convert.add_argument("dst", nargs="?", type=Path, metavar="DST")
    convert.add_argument("--list", action="store_true", help="list the supported formats")
    convert.add_argument("--split", default="train", help="split folder to write under DST (default: train)")
    convert.add_argument("--images", type=Path, metavar="DIR", help="image folder (coco/geojson)")
    convert.add_argument(
        "--raw-types", action="store_true", help="consep: keep the 7 raw types (no HoVer-Net merge)"
    )
    convert.set_defaults(func=run, data_command="convert")

    parser.set_defaults(func=run, data_command=None, _data_parser=parser)
    return parser


def _run_check(args: argparse.Namespace) -> int:
    from promptsam.data.check import check_dataset

    report = check_dataset(args.dir)
    for finding in report.findings:
        if not (args.quiet and finding.severity != "problem"):
            print(finding)
    print(report.format().splitlines()[-1])
    failed = bool(report.problems) or (args.strict and bool(report.warnings))
    return 1 if failed else 0


def _run_convert(args: argparse.Namespace) -> int:
    import importlib

    try:
        conv = importlib.import_module("promptsam.data.convert")
    except ModuleNotFoundError as err:
        if err.name == "promptsam.data.convert":
            raise InputError("data convert is not available in this build") from None
        raise
    formats = getattr(conv, "FORMATS", {})
    if args.list or not args.format:
        if isinstance(formats, dict):
            print("\n".join(f"{name:10s} {desc}" for name, desc in formats.items()))
        else:
            print("formats: " + ", ".join(formats))
        return 0 if args.list else 1
    if formats and args.format not in formats:
        raise InputError(f"unknown format {args.format!r}; choose from: {', '.join(formats)}")
    if args.src is None or args.dst is None:
        raise InputError("usage: promptsam data convert FORMAT SRC DST")
    written = conv.convert(
        args.format, args.src, args.dst, split=args.split, images=args.images, raw_types=args.raw_types
    )
    print(f"converted {len(written)} case(s) into {args.dst / args.split}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to `data check` or `data convert`."""
    if args.data_command == "check":
        return _run_check(args)
    if args.data_command == "convert":
        return _run_convert(args)
    args._data_parser.print_help()
    return 1
