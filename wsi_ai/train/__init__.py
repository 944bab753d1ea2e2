"""Training of MIL aggregators on features stores.

``labels.csv`` + features stores -> :func:`train_run` (k-fold cross-validation, early
stopping, temperature scaling) -> a run folder. Predicting with it is
:mod:`wsi_ai.nn.predict` (:func:`~wsi_ai.nn.predict.load_run`,
:func:`~wsi_ai.nn.predict.predict_store`).
"""

from wsi_ai.train.crossval import train_run
from wsi_ai.train.loop import TrainConfig

__all__ = ["TrainConfig", "train_run"]
