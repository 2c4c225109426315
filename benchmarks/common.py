"""Helpers shared by the benchmark scripts: timing, machine peak, JSON results."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """Measured matmul throughput of this machine in GFLOP/s (best of a few n x n products)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = min(median_seconds(lambda: a @ b, repeats=3, warmup=1) for _ in range(3))
    return 2 * n**3 / best / 1e9


def count_gflops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of `fn` in GFLOP, counted by torch's FlopCounterMode (matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def save_json(path: Path, payload: dict) -> Path:
    """Write `payload` as JSON (NaN -> null) atomically and say where."""
    from promptsam.evaluation import json_safe
    from promptsam.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(payload), indent=2) + "\n")
    repo = RESULTS.parent.parent
    print(f"wrote {path.relative_to(repo) if path.is_relative_to(repo) else path}")
    return path


def write_results(name: str, payload: dict) -> Path:
    """Write `payload` (plus machine info) to benchmarks/results/<name>.json."""
    return save_json(RESULTS / f"{name}.json", {"machine": machine(), **payload})


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as a Markdown table with the given columns."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        print("| " + " | ".join(cells) + " |")
