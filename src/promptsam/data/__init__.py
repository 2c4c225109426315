"""promptsam.data: dataset layouts, fixed validation splits, integrity checks, file pairing and 3D preprocessing."""

from promptsam.data.layout import NucleusDataset, Sample, find_split_dirs, list_samples, stem_of
from promptsam.data.splits import split_names
from promptsam.data.volumes import (
    Crop,
    Roi,
    crop_or_pad,
    list_volume_cases,
    paste,
    preprocess,
    restore,
    roi_center,
    sam_med3d_transforms,
    sliding_window_predict,
)

__all__ = [
    "Crop",
    "NucleusDataset",
    "Roi",
    "Sample",
    "crop_or_pad",
    "find_split_dirs",
    "list_samples",
    "list_volume_cases",
    "paste",
    "preprocess",
    "restore",
    "roi_center",
    "sam_med3d_transforms",
    "sliding_window_predict",
    "split_names",
    "stem_of",
]
