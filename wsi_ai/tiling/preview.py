"""A picture of a patch grid over the slide thumbnail, to check tiling by eye."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from wsi_ai.outputs import atomic_output
from wsi_ai.slide.slide import Slide
from wsi_ai.tiling.grid import PatchGrid

GRID_COLOR = (0, 160, 255)  # RGB: patch outlines
TISSUE_COLOR = (0, 200, 0)  # RGB: tissue outline


def draw_grid(slide: Slide, patches: PatchGrid, max_size: int = 2048) -> np.ndarray:
    """RGB thumbnail with every patch outlined (filled faintly by its tissue fraction)."""
    thumb = slide.thumbnail(max_size).copy()
    sx = thumb.shape[1] / slide.dimensions[0]
    sy = thumb.shape[0] / slide.dimensions[1]
    t = patches.table
    x0 = np.floor(t["x"].to_numpy() * sx).astype(np.int32)
    y0 = np.floor(t["y"].to_numpy() * sy).astype(np.int32)
    x1 = np.ceil((t["x"] + t["width"]).to_numpy() * sx).astype(np.int32) - 1
    y1 = np.ceil((t["y"] + t["height"]).to_numpy() * sy).astype(np.int32) - 1
    fill = thumb.copy()
    frac = np.nan_to_num(t["tissue_fraction"].to_numpy(dtype=np.float32), nan=1.0)
    for a, b, c, d, f in zip(x0, y0, x1, y1, frac, strict=True):
        shade = tuple(int(v * (0.4 + 0.6 * f)) for v in GRID_COLOR)
        cv2.rectangle(fill, (int(a), int(b)), (int(c), int(d)), shade, thickness=-1)
    out = cv2.addWeighted(thumb, 0.75, fill, 0.25, 0)
    for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
        cv2.rectangle(out, (int(a), int(b)), (int(c), int(d)), GRID_COLOR, thickness=1)
    return np.ascontiguousarray(out)


def save_png(image: np.ndarray, path: str | Path, overwrite: bool = False) -> Path:
    """Write an RGB(A) uint8 array as PNG, atomically."""
    out = Path(path)
    with atomic_output(out, overwrite) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return out
