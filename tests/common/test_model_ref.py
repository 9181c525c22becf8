import pytest

from components.common.model_ref import ModelRef, ModelRefError


@pytest.mark.parametrize(
    "uri, kind, fields",
    [
        ("models:/retina-fundus@champion", "registry", {"name": "retina-fundus", "alias": "champion"}),
        ("models:/retina-oct/12", "registry", {"name": "retina-oct", "version": "12"}),
        ("runs:/abc123/model", "run", {"run_id": "abc123", "path": "model"}),
        ("runs:/abc123", "run", {"run_id": "abc123", "path": "model"}),
        ("s3://models/fundus/run-1", "s3", {"path": "s3://models/fundus/run-1"}),
        ("/tmp/model.keras", "local", {"path": "/tmp/model.keras"}),
        ("relative/folder", "local", {"path": "relative/folder"}),
    ],
)
def test_parse_and_format_round_trip(uri, kind, fields):
    ref = ModelRef.parse(uri)
    assert ref.kind == kind
    for key, value in fields.items():
        assert getattr(ref, key) == value
    assert ModelRef.parse(str(ref)) == ref


@pytest.mark.parametrize(
    "uri, message",
    [
        ("models:/retina-fundus", "name a version or an alias"),
        ("models:/retina-fundus/latest", "must be a number"),
        ("models:/retina-fundus@", "expected models:/<name>@<alias>"),
        ("models:/../x/1", "invalid registered model name"),
        ("runs:/", "expected runs:/<run id>"),
        ("gs://bucket/model", "unsupported scheme"),
        ("", "empty model URI"),
    ],
)
def test_malformed_uris_are_refused_with_the_reason(uri, message):
    with pytest.raises(ModelRefError, match=message):
        ModelRef.parse(uri)


@pytest.mark.stack
def test_pinned_resolves_an_alias_through_the_registry(stack):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.create_registered_model("ref-test")
    for _ in range(2):
        client.create_model_version("ref-test", source="s3://models/ref-test/any")
    client.set_registered_model_alias("ref-test", "champion", "2")

    assert ModelRef.parse("models:/ref-test@champion").pinned().uri == "models:/ref-test/2"
    fixed = ModelRef.parse("models:/ref-test/1")
    assert fixed.pinned() is fixed
    with pytest.raises(ModelRefError, match="no @challenger version"):
        ModelRef.parse("models:/ref-test@challenger").pinned(client)
