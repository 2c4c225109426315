"""Evaluation metrics over numpy label arrays (2D and 3D): instance (AJI, AJI+, PQ), semantic, detection,
PanNuke.

All functions take numpy arrays, return plain Python floats / dicts, and take options keyword-only. See
methods.md §7.
"""

from promptsam.metrics.detection import PointMatching, detection_scores, match_points, summarize_detection
from promptsam.metrics.instance import (
    Contingency,
    PQResult,
    aji,
    aji_plus,
    contingency,
    panoptic_quality,
    remap_label,
    score_instances,
)
from promptsam.metrics.objects import (
    aggregated_dice,
    object_dice,
    object_hausdorff,
    object_iou,
    object_metrics,
)
from promptsam.metrics.pannuke import mean_over_folds, pannuke_masks_to_maps, pannuke_pq, score_classes
from promptsam.metrics.semantic import (
    average_surface_distance,
    dice,
    hausdorff95,
    hausdorff_distance,
    iou,
    score_volume,
)
from promptsam.metrics.volume import connected_lesions, lesion_detection, score_lesions

__all__ = [
    "Contingency",
    "PQResult",
    "PointMatching",
    "aggregated_dice",
    "aji",
    "aji_plus",
    "average_surface_distance",
    "connected_lesions",
    "contingency",
    "detection_scores",
    "dice",
    "hausdorff95",
    "hausdorff_distance",
    "iou",
    "lesion_detection",
    "match_points",
    "mean_over_folds",
    "object_dice",
    "object_hausdorff",
    "object_iou",
    "object_metrics",
    "panoptic_quality",
    "pannuke_masks_to_maps",
    "pannuke_pq",
    "remap_label",
    "score_classes",
    "score_instances",
    "score_lesions",
    "score_volume",
    "summarize_detection",
]
