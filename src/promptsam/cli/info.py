"""`promptsam info`: versions, threads, device and where checkpoints are looked for (paste it into bug reports)."""

from __future__ import annotations

import argparse
import os
import platform

from promptsam import __version__


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="show versions, device, registered models and checkpoint folders")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy
    import torch

    from promptsam.device import cpu_supports_bf16, pick_device
    from promptsam.models.registry import cache_dir, checkpoint_dirs, list_models

    device = pick_device("auto")
    print(f"promptsam  {__version__}")
    print(f"python     {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"torch      {torch.__version__}   numpy {numpy.__version__}")
    print(f"threads    torch {torch.get_num_threads()} of {os.cpu_count()} cores")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"device     {device} (auto)   GPU: {gpu}   CPU bf16: {'yes' if cpu_supports_bf16() else 'no'}")
    print(f"cache      {cache_dir()}  (set PROMPTSAM_CACHE_DIR to move it)")
    print("checkpoints are looked for in (PROMPTSAM_CHECKPOINTS, then the cache):")
    for folder in checkpoint_dirs():
        print(f"  {folder}{'' if folder.is_dir() else '  (missing)'}")
    print("models:")
    for entry in list_models():
        found = ""
        if entry.checkpoint_file:
            hits = [
                d / entry.checkpoint_file for d in checkpoint_dirs() if (d / entry.checkpoint_file).is_file()
            ]
            found = f"found at {hits[0]}" if hits else "not found"
        print(f"  {entry.name:<8} {entry.description:<42} {entry.checkpoint_file or '-':<22} {found}")
    return 0
