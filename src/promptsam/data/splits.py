"""The fixed train/validation split of the development data in ../shared/data (documented in docs/data.md).

Everything in ../shared/data is the *train* split of its source; we hold out ~20 % of it as our
validation split. Rule (run once, then frozen in `VAL` below so it can never drift):

- the unit of selection is the image, except CoNSeP where it is the source tile: the name
  ``train_<tile>_<patch>`` keeps the tile, and both patches of a tile land on the same side;
- units are grouped into strata (DSB2018: the modality column of manifest.csv; others: one stratum);
- in each stratum, units are ordered by ``sha256(f"{SALT}:{dataset}:{unit}")`` and the first
  ``k = max(min_val, round(0.2 * n))`` go to validation (MoNuSeg: min_val = 2; others: 1),
  always leaving at least one unit for training;
- a dataset with a single case (brats2021_edema_3d) is validation only: it is a smoke test.

`split_names` returns the frozen `VAL` names and everything else found on disk as train. Model choice,
thresholds and hyper-parameters are tuned on train (or val) of these folders only; the public test sets
named in ../shared/data/README.md are never used.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from promptsam.errors import InputError

if TYPE_CHECKING:
    from promptsam.data.layout import Sample

__all__ = ["DATASETS", "SALT", "VAL", "default_data_root", "select_val", "split_names", "unit_of"]

SALT = "promptsam-val-2024"
VAL_FRACTION = 0.2
MIN_VAL = {"monuseg": 2}
DATASETS_2D = ("monuseg", "dsb2018", "consep")
DATASETS_3D = ("ms_lesion_3d", "brats2021_edema_3d")
DATASETS = DATASETS_2D + DATASETS_3D

# Frozen output of `select_val` on ../shared/data (tests/test_data_layout.py checks they agree).
VAL: dict[str, tuple[str, ...]] = {
    "monuseg": (
        "TCGA-21-5786-01Z-00-DX1",
        "TCGA-50-5931-01Z-00-DX1",
        "TCGA-G9-6362-01Z-00-DX1",
    ),
    "dsb2018": (
        "150b0ffa318c87b31d78af0e87d60390dbcd84b5f228a8c1fb3225cbe5df3e3f",
        "21408476af0506331e8b5d49b385833e5ef1fbb90815fbf9af9d19b4bb145f76",
        "2cfa857e63be1b418c91ad5ea1f8d136fd1b80fc856e1d4277274c3dea28011c",
        "3ca8181367fc1258a418f7bf5044533c83e02a59c1a96def043295c429c297a8",
        "4a424e0cb845cf6fd4d9fe62875552c7b89a4e0276cf16ebf46babe4656a794e",
        "4ae4f936a9ade472764dad80f60f7168e4be067aa66ce9d06d60ebe34951dca4",
        "4e07a653352b30bb95b60ebc6c57afbc7215716224af731c51ff8d430788cd40",
        "718751b439c05bdd589f04fcef321a86be3ecb35292a435138e295e05eb2e771",
        "8175a55b711c948fe383bd3b91b6ca1b9e048a5241e0be13aff31ce2674fbe6d",
        "91cc2e0d4d6e2c1ad59a8d63bcbe3e2ea8bc7f8e642e942a0113450181e73379",
        "a6001531274f9ad16e0ced40380f9667b9149558dea7053f7a7db18f5cd028c0",
        "b214800de5ed4cc558f44d569495970f93c8c047f8e464c51d4bd5c276118423",
        "b3b1626f8ad156acb2963d1faa6a368f9378a266c3b90d9321087fdc5b3032b4",
        "f4c4db3df4ff0de90f44b027fc2e28c16bf7e5c75ea75b0a9762bbb7ac86e7a3",
        "f728de04267283f0b4daab9a840e7433b2c6034baf195fd526850439c9297687",
    ),
    "consep": (
        "train_12_005",
        "train_12_008",
        "train_19_000",
        "train_19_007",
        "train_24_010",
        "train_24_014",
        "train_27_000",
        "train_27_007",
        "train_4_007",
        "train_4_015",
    ),
    "ms_lesion_3d": (
        "patient07",
    ),
    "brats2021_edema_3d": (
        "BraTS2021_01646",
    ),
}

_CONSEP_NAME = re.compile(r"^(?:train|test)_(\d+)_\d+$")


def default_data_root() -> Path:
    """Return $PROMPTSAM_DATA or the development data folder beside the repository (../shared/data)."""
    env = os.environ.get("PROMPTSAM_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def unit_of(dataset: str, name: str) -> str:
    """Return the unit a case is split by: its CoNSeP source tile, else the case name itself."""
    if dataset == "consep":
        match = _CONSEP_NAME.match(name)
        if not match:
            raise InputError(f"consep case {name!r} does not follow train_<tile>_<patch>")
        return f"tile{match.group(1)}"
    return name


def _rank(dataset: str, unit: str) -> str:
    return hashlib.sha256(f"{SALT}:{dataset}:{unit}".encode()).hexdigest()


def select_val(dataset: str, names: list[str], strata: dict[str, str] | None = None) -> list[str]:
    """Apply the documented hash rule to `names` (optional name -> stratum map); return the val names."""
    if len(names) == 1:
        return list(names)
    groups: dict[str, set[str]] = defaultdict(set)
    for name in names:
        groups[(strata or {}).get(name, "")].add(unit_of(dataset, name))
    val_units: set[str] = set()
    for units in groups.values():
        ordered = sorted(units, key=lambda u: _rank(dataset, u))
        k = max(MIN_VAL.get(dataset, 1), round(VAL_FRACTION * len(ordered)))
        val_units.update(ordered[: min(k, len(ordered) - 1)])
    return sorted(n for n in names if unit_of(dataset, n) in val_units)


def _names_on_disk(root: Path, dataset: str) -> list[str]:
    from promptsam.data.layout import list_samples

    folder = root / dataset
    if not folder.is_dir():
        raise InputError(f"{folder}: dataset folder not found (set PROMPTSAM_DATA or pass root=)")
    return [s.name for s in list_samples(folder, "train")]


def manifest_strata(root: str | os.PathLike, dataset: str) -> dict[str, str]:
    """Return name -> domain from `root`/manifest.csv for `dataset` (empty if there is no manifest)."""
    path = Path(root) / "manifest.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return {r["name"]: r["domain"] for r in csv.DictReader(fh) if r["dataset"] == dataset}


def split_names(dataset: str, *, root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Return {"train": [...], "val": [...]} for a dataset of ../shared/data (val is the frozen list)."""
    if dataset not in VAL:
        raise InputError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    root = Path(root) if root is not None else default_data_root()
    names = _names_on_disk(root, dataset)
    val = list(VAL[dataset])
    missing = sorted(set(val) - set(names))
    if missing:
        raise InputError(f"{root / dataset}: validation case {missing[0]!r} is missing")
    return {"train": sorted(set(names) - set(val)), "val": sorted(val)}


def split_samples(dataset: str, split: str, *, root: str | os.PathLike | None = None) -> list[Sample]:
    """The cases (image and label paths) of one split ("train" or "val") of a dataset of ../shared/data, by name."""
    from promptsam.data.layout import list_samples

    root = Path(root) if root is not None else default_data_root()
    samples = {s.name: s for s in list_samples(root / dataset, "train")}
    return [samples[name] for name in split_names(dataset, root=root)[split]]
