"""SAM 2D: image encoders, prompt encoder, mask decoder."""
