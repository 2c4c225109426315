"""promptsam.io: images, label maps and volumes; QuPath GeoJSON; per-nucleus measurements; atomic writes.

The 3D lesion pipeline reads NIfTI through `promptsam.io.volumes` (`read_volume` -> `Volume`, `read_label`,
`read_pair`, `write_volume(path, array, like)`); the package-level `read_volume` / `write_volume` are still the
older tuple-returning ones of `promptsam.io.images` used by the dataset checker.
"""

from promptsam.io.atomic import atomic_path
from promptsam.io.geojson import labels_to_features, read_geojson, write_geojson
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
from promptsam.io.measurements import measure_instances, write_csv
from promptsam.io.volumes import Volume, check_pair, read_label, read_pair

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "Volume",
    "check_pair",
    "read_label",
    "read_pair",
    "atomic_path",
    "labels_to_features",
    "measure_instances",
    "read_geojson",
    "write_csv",
    "write_geojson",
    "is_volume_path",
    "read_image",
    "read_label_volume",
    "read_labels",
    "read_volume",
    "write_labels",
    "write_volume",
]
