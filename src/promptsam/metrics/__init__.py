"""promptsam.metrics."""
