"""promptsam.methods."""
