"""KFP component `train`: a thin wrapper over `components.train.multinode.run_train_step`.

Runs on the GPU image; the pipeline adds `set_accelerator_type('nvidia.com/gpu')` and the GPU limit.
The trained folder (model.keras + retina_model.json) is copied into the `model` artifact as well, with
the MLflow run id and the model URI in its metadata.

`workers=1` trains in this pod (today's single-pod training); `workers>1` makes this pod a launcher of a
Kubeflow TFJob with `workers` pods x `gpus_per_worker` GPUs (components/train/multinode.py), awaited to
the end.

No `from __future__ import annotations` here: KFP reads the real annotation objects. KFP runs this
function's source on its own, so the defaults below must be literals; tests/train/test_component.py
checks each equals TrainConfig's (the one place they are defined).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Model, Output

from components.common.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    modality: str,
    data_uri: str,
    model_name: str,
    image_size: int,
    epochs: int,
    batch_size: int,
    output_uri: str,
    model: Output[Model],
    learning_rate: float = 1e-3,
    head: str = "softmax",
    mlflow_experiment: str = "retina",
    seed: int = 0,
    width: float = 1.0,
    checkpoint_uri: str = "",
    patience: int = 5,
    workers: int = 1,
    gpus_per_worker: int = 1,
) -> NamedTuple("TrainOutputs", [("run_id", str), ("model_uri", str)]):
    from collections import namedtuple

    from components.train.multinode import run_train_step
    from components.train.training import step_config

    config = step_config(
        modality=modality, data_uri=data_uri, model_name=model_name, image_size=image_size, epochs=epochs,
        batch_size=batch_size, output_uri=output_uri, learning_rate=learning_rate, head=head,
        mlflow_experiment=mlflow_experiment, seed=seed, width=width, checkpoint_uri=checkpoint_uri,
        patience=patience, copy_to=model.path,
    )
    run_id, model_uri = run_train_step(config, workers=workers, gpus_per_worker=gpus_per_worker)
    model.metadata.update({"mlflow_run_id": run_id, "model_uri": model_uri, "modality": modality,
                           "model_name": model_name, "framework": "keras", "workers": workers})
    return namedtuple("TrainOutputs", ["run_id", "model_uri"])(run_id, model_uri)
