"""promptsam.io."""
