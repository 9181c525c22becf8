"""Classification metrics as plain numpy functions (no TF, no sklearn, no KFP).

Quadratic weighted kappa (QWK) is the Kaggle DR 2015 metric: agreement between two graders on an
ordinal scale, where a disagreement of two grades costs four times one of one grade. It is also what
the regression head's thresholds are tuned for, so training and evaluation share this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.common.heads import RegressionHead


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts `[true, predicted]`, shape `[num_classes, num_classes]` (int64)."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} holds a class outside 0..{num_classes - 1}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def quadratic_weighted_kappa(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """Cohen's kappa with quadratic weights `w_ij = (i - j)^2 / (K - 1)^2`.

    kappa = 1 - sum(w * O) / sum(w * E), with O the observed confusion matrix and E the outer product
    of the two marginal histograms scaled to the same total. 1 = perfect agreement, 0 = chance.
    When both raters use one single class throughout, kappa is undefined; we return 1.0 if they agree
    everywhere and 0.0 otherwise.
    """
    observed = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    total = observed.sum()
    if total == 0:
        raise ValueError("quadratic_weighted_kappa of zero samples")
    idx = np.arange(num_classes, dtype=np.float64)
    weights = (idx[:, None] - idx[None, :]) ** 2 / max(num_classes - 1, 1) ** 2
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    denominator = float((weights * expected).sum())
    if denominator == 0.0:
        return 1.0 if float((weights * observed).sum()) == 0.0 else 0.0
    return float(1.0 - (weights * observed).sum() / denominator)


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    if t.size == 0:
        raise ValueError("accuracy of zero samples")
    return float((t == p).mean())


def precision_recall(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision and recall from a confusion matrix (0.0 where a class was never predicted/present)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    return precision, recall


def roc_curve(binary_true: Sequence[int], score: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for a binary problem, one point per distinct score, starting at (0, 0).

    The first threshold is `max(score) + 1` rather than infinity, so the curve serialises to JSON
    (KFP's ClassificationMetrics stores it as plain numbers).
    """
    y = np.asarray(binary_true, dtype=np.int64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.where(np.diff(s))[0]
    last = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1 - tps).astype(np.float64)
    positives, negatives = max(tps[-1], 0.0), max(fps[-1], 0.0)
    tpr = np.r_[0.0, tps / positives] if positives else np.r_[0.0, np.zeros_like(tps)]
    fpr = np.r_[0.0, fps / negatives] if negatives else np.r_[0.0, np.zeros_like(fps)]
    thresholds = np.r_[s[0] + 1.0 if s.size else 1.0, s[last]]
    return fpr, tpr, thresholds


def roc_auc(binary_true: Sequence[int], score: Sequence[float]) -> float | None:
    """Area under the ROC curve via the rank statistic (ties count one half); None without both classes."""
    y = np.asarray(binary_true, dtype=np.int64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties (1-based)
    i = 0
    while i < s.size:
        j = i
        while j + 1 < s.size and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def one_vs_rest_auc(y_true: Sequence[int], scores: np.ndarray) -> list[float | None]:
    """AUC of `scores[:, k]` separating class k from the others, for each k (None where undefined)."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64)
    return [roc_auc(t == k, scores[:, k]) for k in range(scores.shape[1])]


def apply_thresholds(values: Sequence[float], thresholds: Sequence[float]) -> np.ndarray:
    """Continuous grades -> class ids through the regression head (see components.common.heads)."""
    return RegressionHead.for_classes(len(thresholds) + 1, thresholds).classes(values)


def optimise_thresholds(
    y_true: Sequence[int], values: Sequence[float], num_classes: int, rounds: int = 3, grid: int = 41
) -> list[float]:
    """Thresholds that maximise QWK of `apply_thresholds(values)` against `y_true`.

    Coordinate search from the rounding thresholds (0.5, 1.5, ...): each threshold in turn is moved
    over a grid between its neighbours, keeping the best. Cheap, deterministic, and the usual recipe
    of the Kaggle DR teams that trained regression heads.
    """
    t = np.asarray(y_true, dtype=np.int64).ravel()
    v = np.asarray(values, dtype=np.float64).ravel()
    thresholds = [k + 0.5 for k in range(num_classes - 1)]
    best = quadratic_weighted_kappa(t, apply_thresholds(v, thresholds), num_classes)
    lo_bound, hi_bound = float(min(v.min(), 0.0)) - 0.5, float(max(v.max(), num_classes - 1)) + 0.5
    for _ in range(rounds):
        improved = False
        for i in range(len(thresholds)):
            lo = thresholds[i - 1] if i > 0 else lo_bound
            hi = thresholds[i + 1] if i + 1 < len(thresholds) else hi_bound
            for cand in np.linspace(lo, hi, grid)[1:-1]:
                trial = thresholds.copy()
                trial[i] = float(cand)
                kappa = quadratic_weighted_kappa(t, apply_thresholds(v, trial), num_classes)
                if kappa > best + 1e-12:
                    best, thresholds, improved = kappa, trial, True
        if not improved:
            break
    return [float(x) for x in thresholds]
