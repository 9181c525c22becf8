"""KFP component for the preprocess step: a thin wrapper over `components.preprocess.pipeline.run_preprocess`.

No `from __future__ import annotations` here: KFP reads the real annotation objects.
`beam_args` is one string (split like a shell line) so a pipeline can pass `--runner=FlinkRunner ...`.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.common.images import PROJECT_IMAGE


@dsl.component(base_image=PROJECT_IMAGE, install_kfp_package=False)
def preprocess(
    modality: str,
    input_uri: str,
    output_uri: str,
    dataset: Output[Dataset],
    image_size: int = 512,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    beam_args: str = "",
    params: str = "",
    max_reject_fraction: float = 0.1,  # KFP needs a literal: pipeline.DEFAULT_MAX_REJECT_FRACTION (a test checks)
) -> NamedTuple("PreprocessOutputs", [("data_uri", str), ("num_images", int), ("num_rejected", int)]):
    """Decode and normalise the raw images at `input_uri` into TFRecord shards at `output_uri` (Beam).

    `params`: a JSON object of further preprocessing parameters, e.g. `{"sigma_ratio": 0.05}`.
    `max_reject_fraction`: more rejected images than this fraction of those listed fails the step."""
    from components.preprocess.pipeline import preprocess_to_artifact

    manifest = preprocess_to_artifact(
        modality, input_uri, output_uri, dataset.path, image_size=image_size, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, beam_args=beam_args, params=params,
        max_reject_fraction=max_reject_fraction,
    )
    # the artifact's file is the manifest; the shards themselves live at output_uri
    dataset.metadata.update(manifest["artifact_metadata"])
    return (output_uri, manifest["num_images"], manifest["rejected_count"])
