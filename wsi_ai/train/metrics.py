"""Slide-level metrics: AUC (binary, or macro one-vs-rest), balanced accuracy, NLL, ECE.

``y`` holds class indices ``[S]``, ``prob`` class probabilities ``[S, C]``. A metric that is
undefined on a set (AUC on a fold holding one class) is ``None``, never a made-up number;
:func:`mean_sd` skips ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from wsi_ai.nn.probabilities import log_softmax


def auc(y: NDArray[np.integer], prob: NDArray[np.floating]) -> float | None:
    """ROC AUC. Two classes: of class 1's probability. More: macro average of the
    one-vs-rest AUCs over the classes that are present with at least one negative
    (equal to scikit-learn's ``multi_class="ovr", average="macro"`` when all are present)."""
    y = np.asarray(y)
    prob = np.asarray(prob, dtype=np.float64)
    n_classes = prob.shape[1]
    if n_classes == 2:
        return float(roc_auc_score(y, prob[:, 1])) if len(set(y.tolist())) == 2 else None
    scores = [
        float(roc_auc_score(y == c, prob[:, c]))
        for c in range(n_classes)
        if 0 < int((y == c).sum()) < len(y)
    ]
    return float(np.mean(scores)) if scores else None


def balanced_accuracy(y: NDArray[np.integer], prob: NDArray[np.floating]) -> float | None:
    """Mean recall over the classes present in ``y`` (prediction = most probable class)."""
    y = np.asarray(y)
    if y.size == 0:
        return None
    pred = np.asarray(prob).argmax(axis=1)
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(recalls))


def nll(y: NDArray[np.integer], logits: NDArray[np.floating]) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of logits ``[S, C]``."""
    lp = log_softmax(logits)
    return float(-lp[np.arange(len(lp)), np.asarray(y)].mean()) + 0.0  # no -0.0


def ece(y: NDArray[np.integer], prob: NDArray[np.floating], bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence over ``bins`` equal-width bins."""
    prob = np.asarray(prob, dtype=np.float64)
    conf = prob.max(axis=1)
    correct = prob.argmax(axis=1) == np.asarray(y)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(float(correct[sel].mean()) - float(conf[sel].mean()))
    return float(total)


def mean_sd(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (ddof=1) of the defined values, and their count."""
    ok = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not ok:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(np.std(ok, ddof=1)) if len(ok) > 1 else None
    return {"mean": float(np.mean(ok)), "sd": sd, "n": len(ok)}
