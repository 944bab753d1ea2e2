"""tissue stage."""
