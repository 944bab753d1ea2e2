"""Keep imported geometry valid: repair invalid polygons, count what was fixed or dropped.

Both annotation readers (QuPath GeoJSON, ASAP XML) pass every geometry through
:func:`repair_polygonal` and record what happened in an :class:`ImportReport`, so an invalid
polygon is never handed on (or written out) as it came, and the caller can say how many were
repaired. Geometry units are untouched (level-0 pixels).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import shapely
from shapely.errors import GEOSException
from shapely.geometry import GeometryCollection, MultiLineString, MultiPoint, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry


@dataclass
class ImportReport:
    """What an annotation import repaired, dropped or skipped, with one message per event."""

    path: Path | None = None
    repaired: int = 0  # invalid polygons made valid (counted per geometry)
    dropped: int = 0  # geometries empty after parsing or repair, not returned
    skipped: int = 0  # objects skipped on purpose (unknown top-level types, TMA cores, ...)
    warnings: list[str] = field(default_factory=list)

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(f"{where}: {message}")


class RepairError(ValueError):
    """GEOS could not check or repair a geometry (absurd coordinates such as +-1e308); the
    reader refuses the file with this message, which names ``where``."""


def repair_polygonal(
    geometry: BaseGeometry, report: ImportReport, where: str
) -> BaseGeometry | None:
    """Return ``geometry`` made valid (polygonal parts kept), or None when nothing is left.

    Self-intersections are resolved by the nonzero winding rule. Points and lines pass
    unchanged. A repair increments ``report.repaired``; an empty result increments
    ``report.dropped``. Both add a message naming ``where``. Raises :class:`RepairError`
    when GEOS fails on the geometry.
    """
    try:
        return _repair(geometry, report, where)
    except GEOSException as err:
        raise RepairError(
            f"{where}: GEOS cannot repair this geometry ({err}); check its coordinates"
        ) from None


def _repair(geometry: BaseGeometry, report: ImportReport, where: str) -> BaseGeometry | None:
    if isinstance(geometry, GeometryCollection) and not isinstance(
        geometry, MultiPoint | MultiLineString | MultiPolygon
    ):
        parts = [_repair(g, report, where) for g in geometry.geoms]
        kept = [g for g in parts if g is not None]
        return GeometryCollection(kept) if kept else None
    if isinstance(geometry, Polygon | MultiPolygon) and not geometry.is_valid:
        reason = shapely.is_valid_reason(geometry)
        fixed = _make_valid(geometry)
        pieces = shapely.get_parts(shapely.get_parts(fixed))  # GeometryCollection > Multi > part
        polys = [p for p in pieces if isinstance(p, Polygon) and p.area > 0]
        if not polys:
            report.dropped += 1
            report.warn(where, f"invalid polygon ({reason}) has no area; dropped")
            return None
        report.repaired += 1
        report.warn(where, f"invalid polygon ({reason}) repaired")
        result: BaseGeometry = polys[0] if len(polys) == 1 else MultiPolygon(polys)
        return result if result.is_valid else shapely.union_all(polys)
    if geometry.is_empty:
        report.dropped += 1
        report.warn(where, "empty geometry; dropped")
        return None
    return geometry


def _make_valid(geometry: BaseGeometry) -> BaseGeometry:
    """Nonzero-winding repair (the "structure" method of shapely >= 2.1): a region drawn twice
    stays filled, as ASAP's mask conversion fills it; "linework" (even-odd) cuts it out."""
    try:
        return shapely.make_valid(geometry, method="structure", keep_collapsed=False)
    except (TypeError, ValueError):  # shapely < 2.1 or GEOS < 3.10
        return shapely.make_valid(geometry)


def warn_summary(report: ImportReport, stacklevel: int = 3) -> None:
    """Emit one Python warning when an import repaired or dropped geometries."""
    if report.repaired or report.dropped:
        warnings.warn(
            f"{report.path}: repaired {report.repaired} invalid polygon(s), dropped "
            f"{report.dropped} empty geometry(ies); pass report=ImportReport() for details",
            stacklevel=stacklevel,
        )
