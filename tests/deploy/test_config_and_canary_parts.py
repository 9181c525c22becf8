"""The pieces of deploy that need no registry or server: config entries, canary image, result parsing."""

from __future__ import annotations

import numpy as np
import pytest

from components.deploy.deployment import (
    _probabilities,
    _status_states,
    canary_image,
    promoted_entry,
)


def test_promoted_entry_moves_stable_and_keeps_the_previous_version_loaded():
    entry = promoted_entry("retina-oct", "/models", 3, previous=2)
    assert entry.labels == {"stable": 3}
    assert entry.versions == [2, 3]
    assert promoted_entry("retina-oct", "/models", 1, previous=None).versions == [1]
    # TF Serving answers requests that name no version with the highest loaded one: a newer previous
    # version (pushing an older one back) must not stay loaded, or it would keep the default traffic
    older = promoted_entry("retina-oct", "/models", 2, previous=5)
    assert older.versions == [2] and older.labels == {"stable": 2}


def test_canary_image_is_a_decodable_colour_png():
    import cv2

    decoded = cv2.imdecode(np.frombuffer(canary_image(48), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (48, 48, 3)
    assert decoded.std() > 10  # not a flat image: preprocessing has something to normalise


@pytest.mark.parametrize(
    "result",
    [
        [[0.1, 0.2, 0.3, 0.4]],
        np.array([[0.1, 0.2, 0.3, 0.4]]),
        {"probabilities": [[0.1, 0.2, 0.3, 0.4]]},
        [{"probabilities": [0.1, 0.2, 0.3, 0.4], "class_id": 3}],
    ],
)
def test_probabilities_are_read_from_any_client_result_shape(result):
    assert _probabilities(result) == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_status_states_reads_the_official_proto():
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    available = response.model_version_status.add()
    available.version, available.state = 2, get_model_status_pb2.ModelVersionStatus.AVAILABLE
    failed = response.model_version_status.add()
    failed.version, failed.state = 3, get_model_status_pb2.ModelVersionStatus.END
    failed.status.error_message = "cannot parse saved_model.pb"
    assert _status_states(response, 2) == [("AVAILABLE", "")]
    assert _status_states(response, 3) == [("END", "cannot parse saved_model.pb")]
    assert _status_states(response, 4) == []
