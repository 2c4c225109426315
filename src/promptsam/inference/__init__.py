"""promptsam.inference."""
