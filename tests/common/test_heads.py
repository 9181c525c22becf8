import numpy as np
import pytest

from components.common.heads import RegressionHead


def test_rounding_thresholds_by_default():
    head = RegressionHead.for_classes(5)
    assert head.thresholds == (0.5, 1.5, 2.5, 3.5)
    assert head.classes([-1.0, 0.49, 0.5, 2.2, 3.49, 9.0]).tolist() == [0, 0, 1, 2, 3, 4]


def test_tuned_thresholds_are_sorted_and_clipped_to_the_last_class():
    head = RegressionHead.for_classes(3, [1.2, 0.4])
    assert head.thresholds == (0.4, 1.2)
    assert head.classes(np.array([[0.3], [0.4], [5.0]])).tolist() == [0, 1, 2]
    assert head.one_hot([0.9]).tolist() == [[0.0, 1.0, 0.0]]


def test_wrong_number_of_thresholds_is_refused():
    with pytest.raises(ValueError, match="need 4 thresholds"):
        RegressionHead.for_classes(5, [0.5, 1.5])
