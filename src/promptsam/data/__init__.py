"""promptsam.data: dataset layouts, fixed validation splits, integrity checks and file pairing."""

from promptsam.data.layout import NucleusDataset, Sample, find_split_dirs, list_samples, stem_of
from promptsam.data.splits import split_names

__all__ = ["NucleusDataset", "Sample", "find_split_dirs", "list_samples", "split_names", "stem_of"]
