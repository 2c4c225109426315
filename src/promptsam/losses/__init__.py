"""promptsam.losses."""
