"""promptsam.io: images, label maps and volumes; QuPath GeoJSON; per-nucleus measurements; atomic writes.

2D images and label maps go through `promptsam.io.images` (`read_image`, `read_labels`, `write_labels`);
NIfTI volumes through `promptsam.io.volumes`: `read_volume(path) -> Volume` (array, affine, spacing, header),
`read_label` (integer label Volume), `read_pair` / `check_pair` (image and label share shape and affine) and
`write_volume(path, array, like)` with `like` a Volume or a 4x4 affine. `read_labels` reads NIfTI label maps
through `read_label`, so there is one NIfTI reader.
"""

from promptsam.io.atomic import atomic_path
from promptsam.io.geojson import labels_to_features, read_geojson, write_geojson
from promptsam.io.images import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    is_volume_path,
    read_image,
    read_labels,
    write_labels,
)
from promptsam.io.measurements import measure_instances, write_csv
from promptsam.io.volumes import Volume, check_pair, read_label, read_pair, read_volume, write_volume

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "Volume",
    "atomic_path",
    "check_pair",
    "is_volume_path",
    "labels_to_features",
    "measure_instances",
    "read_geojson",
    "read_image",
    "read_label",
    "read_labels",
    "read_pair",
    "read_volume",
    "write_csv",
    "write_geojson",
    "write_labels",
    "write_volume",
]
