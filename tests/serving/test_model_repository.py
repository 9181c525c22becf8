"""models.config round trip and the version layout (fast: no TensorFlow)."""

from __future__ import annotations

import pytest

from serving.model_repository import (
    ModelConfigError,
    list_versions,
    model_entry,
    next_version,
    parse_models_config,
    read_models_config,
    write_models_config,
)


def test_models_config_round_trip_keeps_labels_and_policy(tmp_path):
    uri = str(tmp_path / "models.config")
    entries = [model_entry("s3://models/serving", "retina-fundus", labels={"stable": 3, "canary": 4},
                           version_policy="specific", versions=[3, 4]),
               model_entry(str(tmp_path), "retina-oct")]
    text = write_models_config(uri, entries)
    assert 'version_labels' in text and "model_platform" in text
    back = read_models_config(uri)
    assert back[0].base_path == "s3://models/serving/retina-fundus"
    assert back[0].labels == {"stable": 3, "canary": 4} and back[0].versions == [3, 4]
    assert back[1].version_policy == "latest" and back[1].num_versions == 1


def test_bad_models_config_names_the_problem():
    with pytest.raises(ModelConfigError, match="cannot parse"):
        parse_models_config("model_config_list { config { nme: 'x' } }")
    twice = "model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' base_path: '/b' } }"
    with pytest.raises(ModelConfigError, match="named twice"):
        parse_models_config(twice)


def test_only_versions_with_saved_model_pb_count(tmp_path):
    model = tmp_path / "retina-fundus"
    for name in ("1", "2", "7", ".8.tmp", "notes"):
        (model / name).mkdir(parents=True)
    for name in ("1", "7"):
        (model / name / "saved_model.pb").write_bytes(b"x")
    assert list_versions(str(tmp_path), "retina-fundus") == [1, 7]
    assert next_version(str(tmp_path), "retina-fundus") == 8
    assert list_versions(str(tmp_path), "missing") == []
