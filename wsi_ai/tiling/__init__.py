"""tiling stage."""
