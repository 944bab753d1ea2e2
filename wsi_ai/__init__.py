"""wsi-ai: whole-slide images in, QuPath-ready heatmaps and regions out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsi-ai")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
