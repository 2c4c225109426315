"""promptsam.models.sam."""
