"""Annotations: one model (:class:`Annotation`) and readers/writers for QuPath GeoJSON and ASAP XML."""

from wsi_ai.annotations.model import Annotation

__all__ = ["Annotation"]
