"""One annotation model for everything wsi-ai reads and writes.

QuPath GeoJSON, ASAP XML, tissue polygons and model regions all become
:class:`Annotation` objects: a shapely geometry in level-0 pixels plus the
class, colour, name, measurements and free-form properties. Writers and
readers convert to and from this type only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shapely.geometry.base import BaseGeometry

ObjectType = Literal["annotation", "detection", "tile", "cell"]
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Annotation:
    """A geometry in level-0 pixels (origin top-left, x right, y down) and what it means.

    Colours: :attr:`color` is the colour the object is drawn in, its own colour (QuPath's
    ``color``, ASAP's ``<Annotation Color>``) when it has one, else its class colour.
    :attr:`class_color` is the colour of its class (QuPath's ``classification.color``, the
    ASAP group's ``Color``) when the source gives one; ``None`` lets writers use
    :attr:`color` for the class, or a stable colour per class name.
    """

    geometry: BaseGeometry
    classification: str | None = None
    color: RGB | None = None
    name: str | None = None
    object_type: ObjectType = "annotation"
    measurements: Mapping[str, float] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    nucleus_geometry: BaseGeometry | None = None
    locked: bool = False
    class_color: RGB | None = None
