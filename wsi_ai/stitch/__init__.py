"""Stitch stage: per-patch values (level-0 rectangles) → heatmap canvas with overlap blending."""

from wsi_ai.stitch.canvas import (
    Blend,
    Heatmap,
    canvas_shape,
    canvas_spans,
    resolve_downsample,
    stitch,
)

__all__ = ["Blend", "Heatmap", "canvas_shape", "canvas_spans", "resolve_downsample", "stitch"]
