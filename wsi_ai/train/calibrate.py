"""Temperature scaling (Guo et al., ICML 2017) fitted on out-of-fold slide logits.

One scalar ``T > 0`` divides the logits: ``softmax(z / T)``. It minimises the summed
negative log-likelihood of the out-of-fold predictions plus a weak Gaussian prior on
``log T`` (mean 0, sd ``prior_sd`` = 1), found by golden-section search on ``log T`` in
``[log 0.05, log 20]``. The prior matters only for small or perfectly separated OOF sets,
where plain NLL would drive ``T`` to 0 and every calibrated confidence to exactly 1; with a
hundred or more slides it moves ``T`` by a few percent at most. The class ranking, hence AUC
and accuracy, is unchanged; only confidence moves (``T > 1``: the model was overconfident).
Applying ``T`` is :func:`wsi_ai.nn.probabilities.calibrated`'s.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from wsi_ai.errors import ParameterError
from wsi_ai.train.metrics import nll

LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def fit_temperature(
    logits: NDArray[np.floating],
    y: NDArray[np.integer],
    *,
    prior_sd: float | None = 1.0,
    tol: float = 1e-5,
) -> float:
    """The temperature in ``[0.05, 20]`` minimising the NLL of ``softmax(logits / T)`` plus
    ``(log T)^2 / (2 prior_sd^2)`` per set (``prior_sd=None``: plain maximum likelihood)."""
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(y)
    if z.ndim != 2 or z.shape[0] != labels.shape[0] or z.shape[0] == 0:
        raise ParameterError(
            f"need logits [S, C] and labels [S] for at least one slide, "
            f"got {z.shape} and {labels.shape}"
        )

    penalty = 0.0 if prior_sd is None else 0.5 / prior_sd**2 / len(labels)

    def loss(log_t: float) -> float:
        return nll(labels, z / math.exp(log_t)) + penalty * log_t**2

    lo, hi = LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2))
