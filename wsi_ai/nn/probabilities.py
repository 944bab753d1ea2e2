"""Class probabilities from an aggregator's logits ``[S, C]`` (NumPy, float64).

:func:`softmax` gives the raw probabilities; :func:`calibrated` the temperature-scaled ones,
``softmax(logits / T)``, with the ``T`` a training run fitted (:mod:`wsi_ai.train.calibrate`)
and wrote on the aggregator card.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def log_softmax(logits: NDArray[np.floating]) -> NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: NDArray[np.floating]) -> NDArray[np.float64]:
    return np.exp(log_softmax(logits))


def calibrated(logits: NDArray[np.floating], temperature: float) -> NDArray[np.float64]:
    """Calibrated class probabilities ``softmax(logits / T)``."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature)
