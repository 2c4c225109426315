"""promptsam.io: images, label maps and volumes; QuPath GeoJSON; per-nucleus measurements; atomic writes."""

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

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
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
