"""Seconds per 1000x1000 MoNuSeg validation image, two promptsam source trees alternated in one sitting.

    git worktree add /tmp/old_wt <commit>
    .venv/bin/python benchmarks/segment_speed_ab.py --old /tmp/old_wt/src [--model default] [--threads 2] [--rounds 2]

Each round runs the old tree, then this one, each in a fresh process (first image warmed up, then the 3 images
timed); prints the means and the old/new ratio, writes benchmarks/results/segment_speed_ab.json. Ratios, not
absolute seconds, are comparable across sittings on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CHILD = """
import json, sys, time
sys.path.insert(0, {src!r})
import numpy as np, torch
torch.set_num_threads({threads})
from promptsam.pretrained import load_model
from promptsam.data.layout import NucleusDataset
from promptsam.training import gather_samples
model = load_model({model!r}, device="cpu")
_, val, _ = gather_samples([{data!r}])
images = [NucleusDataset(val)[i]["image"] for i in range(len(val))]
model.segment(images[0])
seconds = []
for image in images:
    t = time.perf_counter(); model.segment(image); seconds.append(time.perf_counter() - t)
print(json.dumps(seconds))
"""


def run(src: str, args: argparse.Namespace) -> list[float]:
    """Seconds per image of one fresh process importing promptsam from `src`."""
    code = CHILD.format(src=src, threads=args.threads, model=args.model, data=str(args.data / "monuseg"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from common import write_results
    from promptsam.data.splits import default_data_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="src folder of the tree to compare against")
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, default=default_data_root())
    args = parser.parse_args()
    new = str(HERE.parent / "src")
    rounds = []
    for r in range(args.rounds):
        old_s, new_s = run(args.old, args), run(new, args)
        rounds.append({"old": old_s, "new": new_s})
        print(f"round {r + 1}: old {sum(old_s) / len(old_s):.2f} s/image, new {sum(new_s) / len(new_s):.2f} s/image",
              flush=True)
    old_mean = sum(sum(r["old"]) for r in rounds) / sum(len(r["old"]) for r in rounds)
    new_mean = sum(sum(r["new"]) for r in rounds) / sum(len(r["new"]) for r in rounds)
    print(f"old {old_mean:.2f} s, new {new_mean:.2f} s per 1000x1000 image: new is {old_mean / new_mean:.2f}x")
    write_results("segment_speed_ab", {"old_src": args.old, "model": args.model, "threads": args.threads,
                                       "rounds": rounds, "old_mean_s": old_mean, "new_mean_s": new_mean,
                                       "speedup": old_mean / new_mean})


if __name__ == "__main__":
    main()
