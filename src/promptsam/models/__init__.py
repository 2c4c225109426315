"""promptsam.models."""
