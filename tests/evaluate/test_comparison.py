"""The evaluate gate: challenger and the current champion scored on the same split, floors, and a model
trained on shuffled labels never becomes champion (stopped by the comparison with the champion)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from components.common.errors import RetinaError
from components.evaluate.comparison import parse_floors


def test_floors_parse_from_one_string_and_typos_are_named() -> None:
    assert parse_floors(" qwk>=0.2, accuracy>0.5 ") == [("qwk", ">=", 0.2), ("accuracy", ">", 0.5)]
    assert parse_floors("") == []
    with pytest.raises(RetinaError, match="expected metric>=value"):
        parse_floors("qwk=0.2")
    with pytest.raises(RetinaError, match="'x' is not a number"):
        parse_floors("qwk>=x")


def _oct_sets(tmp_path_factory) -> tuple:
    """Two datasets with the same images and the same val/test splits; in the second the train labels are
    permuted (a model can only learn noise from it)."""
    from retina_test_shards import make_samples, write_dataset

    train = make_samples("oct", 160, seed=11, size=48)
    shuffled = np.random.default_rng(0).permutation([label for _, label in train])
    roots = []
    for name, labels in (("oct", [label for _, label in train]), ("shuffled-oct", shuffled)):
        root = tmp_path_factory.mktemp(name)
        write_dataset(root, "oct", {
            "train": [(img, int(lab)) for (img, _), lab in zip(train, labels, strict=True)],
            "val": make_samples("oct", 16, seed=12, size=48),
            "test": make_samples("oct", 32, seed=13, size=48),
        }, image_size=48)
        roots.append(root)
    return tuple(roots)


def _register(model_uri: str, name: str, old_test_accuracy: float | None = None) -> str:
    """Log a model folder on a run (optionally with an old, other-dataset test metric) and register it."""
    import mlflow

    from components.register.registry import register_challenger

    mlflow.set_experiment("retina-evaluate-tests")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(model_uri, artifact_path="model")
        if old_test_accuracy is not None:
            mlflow.log_metric("test_accuracy", old_test_accuracy)
    return register_challenger("oct", run.info.run_id, registered_model=name).version


@pytest.mark.slow
@pytest.mark.stack
def test_shuffled_label_challenger_is_scored_beside_the_champion_and_never_wins(
        stack, tmp_path_factory, tmp_path) -> None:
    from kfp import dsl
    from mlflow import MlflowClient

    from components.evaluate.comparison import EvaluateConfig, evaluate_challenger
    from components.train.training import TrainConfig, train

    data, shuffled_data = _oct_sets(tmp_path_factory)
    common = dict(modality="oct", model_name="oct_cnn", epochs=6, batch_size=16, width=0.5, tracking=False)
    good, bad = tmp_path / "good", tmp_path / "shuffled"
    train(TrainConfig(data_uri=str(data), output_uri=str(good), **common))
    train(TrainConfig(data_uri=str(shuffled_data), output_uri=str(bad), **common))
    name = f"retina-oct-eval-{uuid.uuid4().hex[:8]}"
    # The champion's own registry number (1.0) came from another dataset: the gate must not use it.
    champion = _register(str(good), name, old_test_accuracy=0.01)
    MlflowClient().set_registered_model_alias(name, "champion", champion)
    challenger = _register(str(bad), name)

    artifacts = {f"{who}_{kind}": cls(name=f"{who}_{kind}", uri=str(tmp_path / f"{who}_{kind}"))
                 for who in ("challenger", "champion")
                 for kind, cls in (("metrics", dsl.Metrics), ("classification", dsl.ClassificationMetrics))}
    cfg = EvaluateConfig(modality="oct", data_uri=str(data), challenger_uri=f"models:/{name}/{challenger}",
                         floors="qwk>=0.1")
    out = evaluate_challenger(cfg, artifacts, str(tmp_path / "verdict.md"))

    assert out.champion is not None and out.champion.ref == f"models:/{name}/{champion}"
    assert out.champion.fingerprint == out.challenger.fingerprint  # same images, same order, same labels
    assert out.champion.result.count == out.challenger.result.count == 32
    assert out.champion.result.accuracy > 0.6  # scored now, not its old number (0.01); it learned
    assert artifacts["champion_metrics"].metadata["accuracy"] == pytest.approx(out.champion.result.accuracy)
    assert artifacts["challenger_classification"].metadata["confusionMatrix"]["rows"]
    verdict = {c.name: c for c in out.checks}
    # Which gate stops it: the comparison with the champion on the same split (and, here, the QWK floor).
    assert not verdict["accuracy_vs_champion"].passed, verdict["accuracy_vs_champion"].describe()
    assert not out.passed
    table = (tmp_path / "verdict.md").read_text()
    assert "| accuracy |" in table and f"champion models:/{name}/{champion}" in table
    print({c.name: c.describe() for c in out.checks})
