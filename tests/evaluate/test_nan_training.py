"""A training run whose loss or weights turn non-finite is refused before anything is saved or registered."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_nan_producing_training_is_refused_and_saves_nothing(eval_oct_data, tmp_path) -> None:
    from components.train.training import TrainConfig, TrainingDiverged, train

    out = tmp_path / "model"
    # A NaN learning rate poisons every weight on the first update: the next batch loss is NaN and
    # TerminateOnNaN stops the fit; the finite-weights check refuses the model.
    config = TrainConfig(modality="oct", data_uri=str(eval_oct_data), model_name="oct_cnn", epochs=2, batch_size=16,
                         width=0.25, tracking=False, output_uri=str(out), learning_rate=float("nan"))
    with pytest.raises(TrainingDiverged, match="diverged.*Nothing was saved or registered"):
        train(config)
    assert not out.exists()
