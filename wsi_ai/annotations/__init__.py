"""Annotations: one model (:class:`Annotation`), QuPath GeoJSON and ASAP XML readers/writers."""

from wsi_ai.annotations.model import Annotation

__all__ = ["Annotation"]
