"""Slide I/O: ``open_slide`` gives one :class:`Slide` type over OpenSlide and tiffslide."""

from wsi_ai.slide.metadata import Level, Mpp
from wsi_ai.slide.slide import Slide, choose_level, open_slide

__all__ = ["Level", "Mpp", "Slide", "choose_level", "open_slide"]
