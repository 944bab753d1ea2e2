"""The contracts between stages, torch-free: what one stage writes and the next reads.

- :mod:`.table`: the patch table (``x, y, width, height`` in level-0 px, ``level``,
  ``tissue_fraction``, later score or label columns) as CSV, Parquet or Zarr;
- :mod:`.features`: the per-slide features store ``OUT/<slide-stem>.zarr`` that inference
  writes and training, prediction and the stitcher read;
- :mod:`.scores`: a table or store read back as patch scores, and the columns to stitch;
- :mod:`.bags`: a features store read as a slide bag (embeddings, grid positions, the
  embedding model's identity) for the MIL aggregators, and finding the stores in a folder.
"""

from wsi_ai.store.bags import SlideBag, find_stores, grid_positions, load_bag
from wsi_ai.store.features import SlideFeatures, features_path, read_features, write_features
from wsi_ai.store.scores import load_scores, score_columns
from wsi_ai.store.table import read_table, table_format, write_table

__all__ = [
    "SlideBag",
    "SlideFeatures",
    "features_path",
    "find_stores",
    "grid_positions",
    "load_bag",
    "load_scores",
    "read_features",
    "read_table",
    "score_columns",
    "table_format",
    "write_features",
    "write_table",
]
