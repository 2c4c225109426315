"""promptsam.data."""
