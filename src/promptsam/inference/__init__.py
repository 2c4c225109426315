"""promptsam.inference."""

from promptsam.inference.classical3d import brain_mask, choose_percentile, dice_table, percentile_threshold

__all__ = ["brain_mask", "choose_percentile", "dice_table", "percentile_threshold"]
