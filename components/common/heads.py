"""How a model's output becomes a class: the one definition of the regression head.

A DR model may end in one continuous grade instead of a softmax (the Kaggle 2015 winners' recipe):
the grade is cut into classes by sorted thresholds, tuned on validation data for QWK. Training tunes
them, evaluation and explanation read classes through them, and the serving export builds the same
cut into the graph — all from this object, so the three cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RegressionHead:
    """`num_classes` classes from one grade: class = how many thresholds the grade reaches."""

    num_classes: int
    thresholds: tuple[float, ...]

    @classmethod
    def for_classes(cls, num_classes: int, thresholds: Sequence[float] | None = None) -> RegressionHead:
        """Rounding thresholds (0.5, 1.5, …) unless tuned ones are given; always sorted."""
        if num_classes < 2:
            raise ValueError(f"a regression head needs at least 2 classes, got {num_classes}")
        chosen = list(thresholds) if thresholds else [k + 0.5 for k in range(num_classes - 1)]
        if len(chosen) != num_classes - 1:
            raise ValueError(f"{num_classes} classes need {num_classes - 1} thresholds, got {len(chosen)}")
        return cls(num_classes, tuple(sorted(float(t) for t in chosen)))

    def classes(self, grades: Sequence[float] | np.ndarray) -> np.ndarray:
        """Continuous grades (any shape) -> int64 class ids, one per grade."""
        values = np.asarray(grades, dtype=np.float64).reshape(-1)
        ids = np.searchsorted(np.asarray(self.thresholds), values, side="right")
        return np.minimum(ids, self.num_classes - 1).astype(np.int64)

    def one_hot(self, grades: Sequence[float] | np.ndarray) -> np.ndarray:
        """The `probabilities` a regression model reports: 1 on its class, 0 elsewhere."""
        return np.eye(self.num_classes, dtype=np.float32)[self.classes(grades)]
