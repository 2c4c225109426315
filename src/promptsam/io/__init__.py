"""promptsam.io: reading and writing images, label maps and volumes; atomic writes."""

from promptsam.io.atomic import atomic_path
from promptsam.io.images import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    is_volume_path,
    read_image,
    read_label_volume,
    read_labels,
    read_volume,
    write_labels,
    write_volume,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "atomic_path",
    "is_volume_path",
    "read_image",
    "read_label_volume",
    "read_labels",
    "read_volume",
    "write_labels",
    "write_volume",
]
