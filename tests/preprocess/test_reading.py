"""Transient is not bad: storage failures that are not the file's fault never reach the dead letter."""

from __future__ import annotations

import socket

import pytest

from components.common.errors import ImageRejected
from components.preprocess.reading import TransientReadError, is_transient, read_image_bytes


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


@pytest.mark.parametrize(("code", "status", "transient"), [
    ("SlowDown", 503, True), ("Throttling", 400, True), ("InternalError", 500, True), ("RequestTimeout", 400, True),
    ("NoSuchKey", 404, False), ("AccessDenied", 403, False), ("InvalidObjectState", 403, False),
])
def test_s3_error_codes_are_classified(code, status, transient):
    from components.common.errors import StorageError

    wrapped = StorageError(f"S3 error {code}")
    wrapped.__cause__ = _client_error(code, status)
    assert is_transient(wrapped) is transient


def test_timeouts_and_resets_are_transient_missing_files_are_not():
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    assert is_transient(ReadTimeoutError(endpoint_url="http://s3"))
    assert is_transient(EndpointConnectionError(endpoint_url="http://s3"))
    assert is_transient(ConnectionResetError("reset by peer"))
    assert not is_transient(FileNotFoundError("gone"))
    assert not is_transient(PermissionError("denied"))


def test_missing_file_is_a_permanent_rejection(tmp_path):
    with pytest.raises(ImageRejected, match="cannot read file") as info:
        read_image_bytes(str(tmp_path / "10_left.jpeg"), "10_left")
    assert info.value.image_id == "10_left"


def test_unreachable_s3_is_transient_after_the_clients_own_retries(monkeypatch):
    """A real boto3 client (botocore `standard` retries, 2 attempts) against a port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("RETINA_S3_MAX_ATTEMPTS", "2")
    with pytest.raises(TransientReadError, match="transient read failure"):
        read_image_bytes("s3://raw/train/10_left.jpeg", "10_left")


def test_transient_failure_is_raised_not_dead_lettered(monkeypatch):
    """preprocess_record (the DoFn's body) raises TransientReadError, which the DoFn re-raises: the bundle
    fails and the runner retries it, instead of calling a healthy image bad."""
    from components.preprocess.params import PreprocessParams
    from components.preprocess.pipeline import preprocess_record

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("RETINA_S3_MAX_ATTEMPTS", "1")
    item = {"image_id": "10_left", "patient_id": "10", "label": 0, "uri": "s3://raw/train/10_left.jpeg",
            "mask_uri": "", "split": "train"}
    with pytest.raises(TransientReadError):
        preprocess_record(item, PreprocessParams(image_size=32))
