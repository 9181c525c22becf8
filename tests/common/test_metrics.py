"""Metric math against hand-computed values."""

import numpy as np
import pytest

from components.common import metrics as m
from components.common.heads import RegressionHead


def test_qwk_matches_hand_computed_example():
    # O = [[1,1,0],[0,2,0],[1,0,1]], w_ij=(i-j)^2/4: sum(w*O) = 0.25 + 1 = 1.25
    # E = row_i * col_j / 6 = [[2/3,1,1/3]]*3: sum(w*E) = 0.5833 + 0.25 + 0.9167 = 1.75 -> 1 - 1.25/1.75 = 2/7
    kappa = m.quadratic_weighted_kappa([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], 3)
    assert kappa == pytest.approx(2 / 7)


def test_qwk_perfect_chance_and_opposite():
    y = [0, 1, 2, 3, 4, 0, 1, 2]
    assert m.quadratic_weighted_kappa(y, y, 5) == pytest.approx(1.0)
    assert m.quadratic_weighted_kappa(y, [2] * len(y), 5) == pytest.approx(0.0)
    assert m.quadratic_weighted_kappa([0, 4, 0, 4], [4, 0, 4, 0], 5) < 0


def test_qwk_penalises_far_errors_more_than_near_ones():
    y = [0, 1, 2, 3, 4] * 4
    near = [min(4, v + 1) if i % 2 else v for i, v in enumerate(y)]
    far = [min(4, v + 3) if i % 2 else v for i, v in enumerate(y)]
    assert m.accuracy(y, near) == m.accuracy(y, far)
    assert m.quadratic_weighted_kappa(y, near, 5) > m.quadratic_weighted_kappa(y, far, 5)


def test_confusion_precision_recall():
    cm = m.confusion_matrix([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    precision, recall = m.precision_recall(cm)
    assert precision.tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert recall.tolist() == pytest.approx([0.5, 1.0, 0.5])


def test_confusion_rejects_out_of_range_label():
    with pytest.raises(ValueError, match="outside"):
        m.confusion_matrix([0, 5], [0, 1], 3)


def test_auc_hand_example_and_ties():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 1+0+1+1 = 3 of 4
    assert m.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert m.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert m.roc_auc([1, 1], [0.1, 0.2]) is None


def test_roc_curve_runs_from_origin_to_one_with_finite_thresholds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = y + rng.normal(0, 0.8, 50)
    fpr, tpr, thr = m.roc_curve(y, s)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.all(np.isfinite(thr))
    assert np.trapezoid(tpr, fpr) == pytest.approx(m.roc_auc(y, s))


def test_optimised_thresholds_beat_rounding_on_compressed_outputs():
    y = np.repeat(np.arange(5), 20)
    values = y * 0.5 + np.random.default_rng(1).normal(0, 0.05, y.size)  # a regressor that under-shoots
    rounded = m.quadratic_weighted_kappa(y, m.apply_thresholds(values, RegressionHead.for_classes(5).thresholds), 5)
    tuned = m.optimise_thresholds(y, values, 5)
    assert m.quadratic_weighted_kappa(y, m.apply_thresholds(values, tuned), 5) > max(rounded, 0.99)
    assert tuned == sorted(tuned)
