"""A planted-lesion model (the explanation tests' data: a model can only be right by looking at the lesion)
and its randomized-weights twin, both in the model-directory contract."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("retina_planted", Path(__file__).resolve().parents[1] / "explain"
                                               / "conftest.py")
planted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(planted)


def save_model_dir(model, out: Path) -> Path:
    out.mkdir(parents=True)
    model.save(str(out / "model.keras"))
    info = {"modality": "fundus", "model_name": "planted_cnn", "class_names": ["no lesion", "lesion"],
            "image_size": planted.IMAGE_SIZE, "head": "softmax", "thresholds": None, "preprocessing": {},
            "code_version": "test", "run_id": ""}
    (out / "retina_model.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="session")
def planted_models(tmp_path_factory) -> dict[str, Path]:
    """{"trained": dir, "randomized": dir}: the same architecture, trained vs freshly initialised."""
    import keras

    images, labels, _ = planted.planted_lesions(384, seed=1)
    model = planted.small_cnn()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, batch_size=32, epochs=6, verbose=0, shuffle=True)
    root = tmp_path_factory.mktemp("planted-models")
    return {"trained": save_model_dir(model, root / "trained"),
            "randomized": save_model_dir(planted.small_cnn(seed=42), root / "randomized")}


@pytest.fixture(scope="session")
def lesion_folder(tmp_path_factory) -> Path:
    """Planted-lesion PNGs with masks/<id>.png (so the pointing game is measured)."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("lesions")
    (root / "masks").mkdir()
    images, _, masks = planted.planted_lesions(8, seed=7, positive_fraction=1.0)
    for i, (img, mask) in enumerate(zip(images, masks, strict=True)):
        cv2.imwrite(str(root / f"lesion_{i}.png"), cv2.cvtColor((img * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"lesion_{i}.png"), mask)
    return root
