"""Cohort-level QC: which slides stand out from the rest, measure by measure.

:func:`cohort_outliers` takes one row per slide (the :meth:`~wsi_ai.qc.measures.SlideQC.as_dict`
of each, or any mapping of numbers) and names, per row, the measures whose robust z-score
exceeds ``z``, so that a lab sees a scanner drifting out of focus or a staining batch gone off.

The robust z-score of a value x among a measure's values is Iglewicz and Hoaglin's modified
z-score, ``0.6745 * (x - median) / MAD`` (MAD: the median absolute deviation from the
median), i.e. ``(x - median) / sigma`` with ``sigma = MAD / 0.6745``. Both tails count.

* **MAD == 0** (more than half the slides share one value, e.g. pen_fraction 0 on most):
  ``sigma`` falls back to ``1.2533 * mean absolute deviation`` (Iglewicz and Hoaglin's
  suggestion); when every value is the median, nothing is flagged.
* **A floor on sigma**, per measure (``MIN_SCALE``): differences too small to matter are never
  flagged however alike the other slides are. A slide is flagged on a measure only when it
  differs from the median by more than ``z`` times the floor: 0.02 for blur_fraction (about one
  patch of 64), 0.005 for pen_fraction and bubble_fraction, 1 degree for stain angles, 2 % of
  the median for tissue area and stain concentrations, a millionth of the median for any other
  measure.
* **At least** ``MIN_SLIDES`` = 5 slides with a value are needed before a measure flags
  anything: the median and MAD of fewer say nothing about what is normal.
* **Missing values** (key absent from the row, None, NaN or infinite) are never passed over:
  the row gets ``"<measure> (missing)"`` (whatever the cohort size: no statistics are
  involved), and the value takes no part in the median. A measure no row has at all is not a
  measure of this cohort and is skipped. Brightfield-only measures (everything but
  tissue_area_mm2) are not expected of rows whose ``modality`` is ``"fluorescence"``.
  A value that is not a number (a string, a bool) is an :class:`~wsi_ai.errors.InvalidInputError`.

Stain measures are derived from the rows' ``stain_vectors`` and ``stain_max_concentrations``
(as :meth:`SlideQC.as_dict` writes them) when the row has no such key itself:

* ``stain_h_drift`` / ``stain_e_drift``: degrees between the slide's hematoxylin (eosin) vector
  and the cohort's median one (component-wise median of the unit vectors, renormalised). This
  catches drift in any direction; an angle to a fixed reference (``stain_h_angle``, which
  :meth:`SlideQC.as_dict` also writes and which may be listed in ``keys``) misses a slide that
  moved as far from the reference as the others but in another direction.
* ``stain_h_max`` / ``stain_e_max``: the 99th-percentile concentrations (staining intensity).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np

from wsi_ai.errors import InvalidInputError, ParameterError

DEFAULT_KEYS = (
    "tissue_area_mm2",
    "blur_fraction",
    "pen_fraction",
    "bubble_fraction",
    "stain_h_drift",
    "stain_e_drift",
    "stain_h_max",
    "stain_e_max",
)
MIN_SLIDES = 5
MAD_TO_SIGMA = 0.6745  # MAD of a normal distribution / its standard deviation
MEANAD_TO_SIGMA = 1.253314  # sqrt(pi / 2): standard deviation / mean absolute deviation
# (absolute, relative to |median|) floors on sigma, per measure.
MIN_SCALE: dict[str, tuple[float, float]] = {
    "tissue_area_mm2": (0.0, 0.02),
    "blur_fraction": (0.02, 0.0),
    "pen_fraction": (0.005, 0.0),
    "bubble_fraction": (0.005, 0.0),
    "stain_h_drift": (1.0, 0.0),
    "stain_e_drift": (1.0, 0.0),
    "stain_h_angle": (1.0, 0.0),
    "stain_e_angle": (1.0, 0.0),
    "stain_h_max": (0.0, 0.02),
    "stain_e_max": (0.0, 0.02),
}
DEFAULT_MIN_SCALE = (1e-12, 1e-6)
# Measures that are only defined on brightfield slides.
BRIGHTFIELD_ONLY = frozenset(
    {
        "blur_fraction",
        "pen_fraction",
        "bubble_fraction",
        "stain_h_drift",
        "stain_e_drift",
        "stain_h_angle",
        "stain_e_angle",
        "stain_h_max",
        "stain_e_max",
    }
)
_STAINS = {"h": "hematoxylin", "e": "eosin"}


def cohort_outliers(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str] = DEFAULT_KEYS,
    z: float = 3.5,
) -> list[list[str]]:
    """Per row, the measures (in ``keys`` order) whose robust z-score exceeds ``z``, and
    ``"<measure> (missing)"`` for each measure the row lacks; see the module docstring."""
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise ParameterError(f"keys must be a sequence of measure names, got {keys!r}")
    if isinstance(z, bool) or not isinstance(z, Real) or not math.isfinite(z) or z <= 0:
        raise ParameterError(f"z must be a positive number, got {z!r}")
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidInputError(f"row {index} is a {type(row).__name__}, not a mapping")
    flags: list[list[str]] = [[] for _ in rows]
    for key in dict.fromkeys(keys):
        column = _column(rows, key)
        if column is None:
            continue
        values, expected = column
        finite = values[np.isfinite(values) & expected]
        for index in np.flatnonzero(expected & ~np.isfinite(values)):
            flags[index].append(f"{key} (missing)")
        if len(finite) < MIN_SLIDES:
            continue
        median = float(np.median(finite))
        deviation = np.abs(finite - median)
        mad = float(np.median(deviation))
        sigma = mad / MAD_TO_SIGMA if mad > 0 else MEANAD_TO_SIGMA * float(deviation.mean())
        absolute, relative = MIN_SCALE.get(key, DEFAULT_MIN_SCALE)
        sigma = max(sigma, absolute, relative * abs(median))
        if sigma <= 0:
            continue
        with np.errstate(invalid="ignore"):
            outlying = expected & np.isfinite(values) & (np.abs(values - median) > z * sigma)
        for index in np.flatnonzero(outlying):
            flags[index].append(key)
    return flags


def _number(value: Any, index: int, key: str) -> float:
    """A row's value as a float: NaN for None; non-numbers refused."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidInputError(f"row {index}: {key} is {value!r}, not a number")
    return float(value)


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, expected) for ``key`` over ``rows``; None when no row has the measure.

    ``values`` is NaN where a row lacks it; ``expected`` is False where the measure does not
    apply to the row (a brightfield measure on a fluorescence slide).
    """
    n = len(rows)
    values = np.full(n, np.nan)
    expected = np.array(
        [not (key in BRIGHTFIELD_ONLY and row.get("modality") == "fluorescence") for row in rows],
        dtype=bool,
    )
    if any(key in row for row in rows):
        for index, row in enumerate(rows):
            values[index] = _number(row.get(key), index, key)
        return values, expected
    derived = _derived(rows, key)
    if derived is None:
        return None
    return derived, expected


def _derived(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray | None:
    """Stain measures from ``stain_vectors`` / ``stain_max_concentrations``; None if neither
    the key nor its source is in any row."""
    parts = key.split("_")
    if len(parts) != 3 or parts[0] != "stain" or parts[1] not in _STAINS:
        return None
    stain, kind = _STAINS[parts[1]], parts[2]
    source = {"drift": "stain_vectors", "max": "stain_max_concentrations"}.get(kind)
    if source is None or not any(source in row for row in rows):
        return None
    out = np.full(len(rows), np.nan)
    if kind == "max":
        for index, row in enumerate(rows):
            found = row.get(source)
            if found is not None:
                out[index] = _number(_member(found, stain, index, source), index, key)
        return out
    vectors = np.full((len(rows), 3), np.nan)
    for index, row in enumerate(rows):
        found = row.get(source)
        if found is None:
            continue
        vector = _member(found, stain, index, source)
        try:
            v = np.asarray([_number(c, index, key) for c in vector], dtype=np.float64)
        except TypeError as err:
            raise InvalidInputError(f"row {index}: {source}[{stain!r}] is not [r, g, b]") from err
        if v.shape != (3,):
            raise InvalidInputError(f"row {index}: {source}[{stain!r}] is not [r, g, b]")
        norm = float(np.linalg.norm(v))
        if math.isfinite(norm) and norm > 0:
            vectors[index] = v / norm
    valid = np.all(np.isfinite(vectors), axis=1)
    if not valid.any():
        return out
    reference = np.median(vectors[valid], axis=0)
    reference /= np.linalg.norm(reference)
    cosines = np.clip(vectors[valid] @ reference, -1.0, 1.0)
    out[valid] = np.degrees(np.arccos(cosines))
    return out


def _member(found: Any, stain: str, index: int, source: str) -> Any:
    if not isinstance(found, Mapping):
        raise InvalidInputError(f"row {index}: {source} is {found!r}, not a mapping by stain")
    return found.get(stain)
