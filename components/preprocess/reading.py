"""Reading one raw image, and telling a transient storage failure from a permanent one.

Transient failures (S3 throttling, 5xx, timeouts, connection resets) are retried with backoff by the S3
client itself: `components.common.storage` builds it with botocore's `standard` retry mode
(`RETINA_S3_MAX_ATTEMPTS` attempts, exponential backoff with jitter; throttling and transient errors
are what that mode retries). What is still transient after those retries is NOT the image's fault: it is
raised as `TransientReadError`, which fails the Beam bundle (runners retry bundles; the local runner
fails the run) instead of writing a healthy image to the dead letter. Permanent failures (no such
object, access denied, a local file that vanished) are the image's: `ImageRejected` with the reason.
"""

from __future__ import annotations

from components.common import storage
from components.common.errors import ImageRejected, RetinaError, StorageError

# S3 error codes that say "try again later" (botocore's own lists: retryhandler / standard retry mode)
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "SlowDown",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestThrottled", "PriorRequestNotComplete",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable", "500", "502", "503", "504",
})


class TransientReadError(RetinaError):
    """A read failed for a reason that is not the file's (still failing after the client's retries)."""


def is_transient(exc: BaseException) -> bool:
    """True for throttling, server errors, timeouts and dropped connections, wherever they were wrapped."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _transient_one(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _transient_one(exc: BaseException) -> bool:
    try:
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover - botocore ships with the project
        boto = None
    if boto is not None:
        if isinstance(exc, boto.ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return error.get("Code", "") in TRANSIENT_CODES or int(status or 0) >= 500
        if isinstance(exc, (boto.ConnectionError, boto.HTTPClientError, boto.ConnectTimeoutError,
                            boto.ReadTimeoutError, boto.ResponseStreamingError)):
            return True
    return isinstance(exc, (ConnectionError, TimeoutError)) and not isinstance(exc, FileNotFoundError)


def read_image_bytes(uri: str, image_id: str) -> bytes:
    """The file's bytes. Raises TransientReadError (retry later) or ImageRejected (the file's own fault)."""
    try:
        if storage.is_s3(uri) or "://" not in str(uri):
            return storage.read_bytes(uri)
        return _read_with_beam(uri)
    except (StorageError, OSError, ValueError) as exc:
        if is_transient(exc):
            raise TransientReadError(f"{image_id}: transient read failure after the client's retries ({exc})") from exc
        raise ImageRejected(image_id, f"cannot read file ({_short(exc)})") from exc


def _read_with_beam(uri: str) -> bytes:
    """Other schemes (gs://, hdfs://, …) through Beam's filesystems, as the runner's workers reach them."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
