"""SAM-Med3D: the 3D sibling of SAM (volume encoder, 3D prompt encoder, 3D mask decoder)."""
