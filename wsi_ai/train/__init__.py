"""Training and prediction of MIL aggregators on features stores.

``labels.csv`` + features stores -> :func:`train_run` (k-fold cross-validation, early
stopping, temperature scaling) -> a run folder -> :func:`load_run` + :func:`predict_store`.
"""

from wsi_ai.train.crossval import train_run
from wsi_ai.train.loop import TrainConfig
from wsi_ai.train.predict import TrainedAggregator, load_run, predict_store

__all__ = ["TrainConfig", "TrainedAggregator", "load_run", "predict_store", "train_run"]
