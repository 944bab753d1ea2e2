"""Slide metadata as plain frozen values: levels, MPP and where it came from.

MPP (microns per pixel) is never guessed silently. :func:`resolve_mpp` applies the
order fixed in DESIGN.md: the user's override, then the file's metadata, then the
objective power (with a warning), else ``None`` -- and whoever needs an MPP calls
:meth:`SlideInfo.require_mpp`, which raises :class:`MissingMppError` asking for
``--slide-mpp``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from wsi_ai.errors import ParameterError

log = logging.getLogger(__name__)

MppSource = Literal["user", "metadata", "objective-power"]
Modality = Literal["brightfield", "fluorescence"]

# OpenSlide's and tiffslide's normalised property names (identical strings).
PROP_MPP_X = "openslide.mpp-x"
PROP_MPP_Y = "openslide.mpp-y"
PROP_OBJECTIVE = "openslide.objective-power"
PROP_VENDOR = "openslide.vendor"
TIFFSLIDE_PREFIX = "tiffslide."

# 10 µm/px at 1x: the usual convention (20x -> 0.5 µm/px, 40x -> 0.25 µm/px).
MICRONS_AT_1X = 10.0
# A plain TIFF's resolution tags are often an image editor's 72/96/300 dpi (85-350 µm/px),
# not a microscope calibration; a scan at coarser than this is not believed without --slide-mpp.
MAX_TIFF_MPP = 10.0


@dataclass(frozen=True)
class Level:
    """One pyramid level as the backend that opened the slide reports it."""

    index: int
    width: int
    height: int
    downsample: float

    @property
    def dimensions(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass(frozen=True)
class Mpp:
    """Level-0 microns per pixel and where the value came from."""

    x: float
    y: float
    source: MppSource

    @property
    def mean(self) -> float:
        return (self.x + self.y) / 2.0


def _positive_float(value: object) -> float | None:
    try:
        number = float(str(value))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def normalise_properties(props: Mapping[str, str]) -> dict[str, str]:
    """Properties with tiffslide's ``tiffslide.*`` names also given OpenSlide's ``openslide.*``."""
    out = {str(k): str(v) for k, v in props.items() if v is not None}
    for key, value in list(out.items()):
        if key.startswith(TIFFSLIDE_PREFIX):
            out.setdefault("openslide." + key[len(TIFFSLIDE_PREFIX) :], value)
    return out


def objective_power(props: Mapping[str, str]) -> float | None:
    return _positive_float(props.get(PROP_OBJECTIVE))


def resolve_mpp(
    props: Mapping[str, str],
    mpp_override: float | tuple[float, float] | None,
    name: str,
    calibrated: bool = True,
) -> Mpp | None:
    """The slide's level-0 MPP by DESIGN.md's order; ``None`` when nothing gives one.

    ``calibrated`` is false for files whose MPP can only come from generic TIFF
    resolution tags (tiffslide): values coarser than :data:`MAX_TIFF_MPP` are ignored.
    """
    if mpp_override is not None:
        mx, my = mpp_override if isinstance(mpp_override, tuple) else (mpp_override, mpp_override)
        if _positive_float(mx) is None or _positive_float(my) is None:
            raise ParameterError(
                f"--slide-mpp must be a positive number of µm per pixel (e.g. 0.25 for a 40x "
                f"scan), got {mpp_override!r}"
            )
        return Mpp(float(mx), float(my), "user")
    meta_x = _positive_float(props.get(PROP_MPP_X))
    meta_y = _positive_float(props.get(PROP_MPP_Y))
    if meta_x is not None or meta_y is not None:
        found = Mpp(meta_x or meta_y or 0.0, meta_y or meta_x or 0.0, "metadata")
        if calibrated or found.mean <= MAX_TIFF_MPP:
            return found
        log.warning(
            "%s: ignoring the TIFF resolution tags (%.4g µm/px looks like an image editor's "
            "dpi, not a microscope scan); pass --slide-mpp",
            name,
            found.mean,
        )
    power = objective_power(props)
    if power is not None:
        mpp = MICRONS_AT_1X / power
        log.warning(
            "%s: no MPP in the metadata; using %.4g µm/px from the %gx objective power "
            "(pass --slide-mpp to set it exactly)",
            name,
            mpp,
            power,
        )
        return Mpp(mpp, mpp, "objective-power")
    return None
