"""stitch stage."""
