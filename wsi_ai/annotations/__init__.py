"""Annotations: one model (:class:`Annotation`), readers for QuPath GeoJSON and ASAP XML, the
ASAP XML writer, and patch labels from annotations."""

from wsi_ai.annotations.asap import AsapWriteReport, read_asap_xml, write_asap_xml
from wsi_ai.annotations.labels import patch_class_fractions, patch_labels
from wsi_ai.annotations.model import Annotation
from wsi_ai.annotations.qupath import read_qupath_geojson
from wsi_ai.annotations.repair import ImportReport

__all__ = [
    "Annotation",
    "AsapWriteReport",
    "ImportReport",
    "patch_class_fractions",
    "patch_labels",
    "read_asap_xml",
    "read_qupath_geojson",
    "write_asap_xml",
]
