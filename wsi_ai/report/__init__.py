"""Review outputs for the pathologist: a ``report.html`` per slide, ``summary.html`` per batch.

Both are single self-contained files (images inlined, no server, no fetch); they show slide
file names, never paths or scanner properties. See :mod:`.slide` and :mod:`.cohort`.
"""

from wsi_ai.report.cohort import (
    NEGATIVE_CLASSES,
    SUMMARY_NAME,
    suspicion,
    triage_order,
    write_cohort_report,
)
from wsi_ai.report.slide import MAX_REGIONS, REPORT_NAME, write_slide_report

__all__ = [
    "MAX_REGIONS",
    "NEGATIVE_CLASSES",
    "REPORT_NAME",
    "SUMMARY_NAME",
    "suspicion",
    "triage_order",
    "write_cohort_report",
    "write_slide_report",
]
