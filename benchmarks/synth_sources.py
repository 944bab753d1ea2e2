"""Real H&E tissue to fill synthetic slides with: slides, images and patch folders.

A ``TissueSource`` hands out square crops of real tissue (level-0 px of the slide being made)
in one of 8 orientations, from positions that are mostly tissue; small images such as the
224 px CRC patches are mosaicked. Sources are resampled to the target MPP where the file states
its own; otherwise ``ASSUMED_MPP`` is used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from wsi_ai.errors import SlideNotFoundError, UnsupportedSlideError

ASSUMED_MPP = 0.5  # for sources whose file states no MPP (the CRC patches are 0.5 µm/px)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES = (
    "slides/CMU-1-Small-Region.svs",
    "slides/tcga-cr-7395-01a-01-ts1.svs",
    "slides/skin-he-striped.tif",
    "patches/crc-val-he-7k-subset",
)
BUNDLED_SOURCES = ("CMU-1-Small-Region.svs", "skin-he-striped.tif")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs"}


class TissueSource:
    """Real H&E to tile islands with: ``groups`` of RGB uint8 images (one group per class).

    A large image gives crops at positions that are mostly tissue; small images (patches)
    are mosaicked. ``variant`` picks the group, so one island keeps one class.
    """

    def __init__(self, name: str, groups: Sequence[Sequence[np.ndarray]]) -> None:
        self.name = name
        self.groups = [list(g) for g in groups if len(g)]
        self._origins: dict[tuple[int, int, int], np.ndarray] = {}
        self._transposed: dict[tuple[int, int], np.ndarray] = {}

    def prepare(self, size: int) -> None:
        """Fill the caches ``crop`` needs for ``size`` (so threads only read them)."""
        for g, group in enumerate(self.groups):
            for i, im in enumerate(group):
                self._transposed[g, i] = np.ascontiguousarray(im.transpose(1, 0, 2))
                if min(im.shape[:2]) >= size:
                    self._crop_origins(g, i, size)

    def _view(self, g: int, i: int, y: int, x: int, size: int, r: int) -> np.ndarray:
        """Crop [y:y+size, x:x+size] of image i in group g, in orientation ``r`` of 8.

        Quarter turns come from a cached transposed copy, so every orientation is a cheap
        view (copying a rotated view of a big image is several times slower).
        """
        if r & 4:
            t = self._transposed.get((g, i))
            if t is None:
                t = self._transposed[g, i] = np.ascontiguousarray(
                    self.groups[g][i].transpose(1, 0, 2)
                )
            a = t[x : x + size, y : y + size]
        else:
            a = self.groups[g][i][y : y + size, x : x + size]
        a = a[::-1] if r & 1 else a
        return a[:, ::-1] if r & 2 else a

    def crop(self, rng: np.random.Generator, size: int, variant: int) -> np.ndarray:
        """A (size, size, 3) uint8 tissue crop (possibly a strided view)."""
        g = variant % len(self.groups)
        group = self.groups[g]
        big = [i for i, im in enumerate(group) if min(im.shape[:2]) >= size]
        if big:
            i = big[int(rng.integers(len(big)))]
            origins = self._crop_origins(g, i, size)
            y, x = origins[int(rng.integers(len(origins)))]
            return self._view(g, i, int(y), int(x), size, int(rng.integers(8)))
        side = min(min(im.shape[:2]) for im in group)
        n = -(-size // side)
        canvas = np.empty((n * side, n * side, 3), np.uint8)
        for k in range(n * n):
            i = int(rng.integers(len(group)))
            y, x = (int(rng.integers(s - side + 1)) for s in group[i].shape[:2])
            ys, xs = (k // n) * side, (k % n) * side
            canvas[ys : ys + side, xs : xs + side] = self._view(
                g, i, y, x, side, int(rng.integers(8))
            )
        return canvas[:size, :size]

    def _crop_origins(self, g: int, i: int, size: int) -> np.ndarray:
        """(y, x) origins of crops that are at least 85 % tissue (else the best 10 %)."""
        key = (g, i, size)
        if key not in self._origins:
            im, step = self.groups[g][i], 8
            small = cv2.resize(
                im, (im.shape[1] // step, im.shape[0] // step), interpolation=cv2.INTER_AREA
            )
            hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
            tissue = ((hsv[..., 1] > 25) & (hsv[..., 2] < 235)).astype(np.uint8)
            integ = cv2.integral(tissue)
            n = size // step
            yy, xx = np.mgrid[0 : tissue.shape[0] - n + 1, 0 : tissue.shape[1] - n + 1]
            s = integ[yy + n, xx + n] - integ[yy, xx + n] - integ[yy + n, xx] + integ[yy, xx]
            frac = (s / (n * n)).ravel()
            keep = frac >= 0.85 if (frac >= 0.85).any() else frac >= np.quantile(frac, 0.9)
            self._origins[key] = np.stack([yy.ravel()[keep], xx.ravel()[keep]], axis=1) * step
        return self._origins[key]


def _read_rgb(path: Path, mpp: float) -> np.ndarray:
    """Level 0 of a slide/TIFF or an image file as RGB uint8, resampled to ``mpp`` µm/px."""
    try:
        if path.suffix.lower() in {".svs", ".tif", ".tiff"}:
            with tifffile.TiffFile(path) as tf:
                img, desc = tf.pages.first.asarray(), tf.pages.first.description
            m = re.search(r"MPP = ([0-9.]+)", desc or "")
            src_mpp = float(m.group(1)) if m else ASSUMED_MPP
        else:
            with Image.open(path) as pil:
                img, src_mpp = np.asarray(pil.convert("RGB")), ASSUMED_MPP
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise UnsupportedSlideError(f"cannot read as an RGB tissue source ({err})", path) from err
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] < 3:
        raise UnsupportedSlideError("tissue sources must be 8-bit RGB images", path)
    img = np.ascontiguousarray(img[..., :3])
    scale = src_mpp / mpp
    if abs(scale - 1) > 0.02:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=interp)
    return img


def load_source(path: Path, mpp: float = 0.5) -> TissueSource:
    """A slide or image file (one group) or a patch folder (one group per sub-folder)."""
    path = Path(path)
    if not path.exists():
        raise SlideNotFoundError("tissue source not found; pass an existing slide or folder", path)
    if not path.is_dir():
        return TissueSource(path.name, [[_read_rgb(path, mpp)]])
    groups = []
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
        if files:
            groups.append([_read_rgb(f, mpp) for f in files])
    if not groups:
        raise UnsupportedSlideError("folder holds no tissue images (.png, .jpg, .tif)", path)
    return TissueSource(path.name, groups)


def default_sources() -> list[Path]:
    """The shared real H&E (``WSI_AI_TEST_DATA`` or ../shared/data), else the bundled two."""
    env = os.environ.get("WSI_AI_TEST_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    found = [root / f for f in DEFAULT_SOURCES if (root / f).exists()]
    return found or [REPO / "wsi_ai" / "data" / f for f in BUNDLED_SOURCES]
