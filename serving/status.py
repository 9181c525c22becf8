"""Canonical status codes, as TF Serving answers them over gRPC and REST.

One exception type (`ServingStatus`) is raised anywhere below a servicer or REST handler; the gRPC layer
turns it into the status of the same name, the REST layer into TF Serving's HTTP code
(`http_server.cc` ToHTTPStatusCode) and body `{"error": "<message>"}`.
"""

from __future__ import annotations

CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
NAMES = {v: k for k, v in CODES.items()}

# TF Serving's mapping (http_server.cc): note FAILED_PRECONDITION and OUT_OF_RANGE are 400 too.
HTTP = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


class ServingStatus(Exception):
    """A status to answer with: `code_name` is the canonical name (NOT_FOUND, INVALID_ARGUMENT, ...)."""

    def __init__(self, code_name: str, message: str):
        super().__init__(message)
        self.code_name = code_name
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP.get(self.code_name, 500)


GRPC_MESSAGE_LIMIT = 1024  # grpc_status_util.cc ToGRPCStatus: kErrorMessageLimit


def grpc_message(message: str) -> str:
    """A status message as TF Serving's gRPC layer sends it: past 1024 bytes, cut and marked `...TRUNCATED`."""
    raw = message.encode("utf-8")
    if len(raw) <= GRPC_MESSAGE_LIMIT:
        return message
    return raw[:GRPC_MESSAGE_LIMIT].decode("utf-8", "ignore") + "...TRUNCATED"


def not_found(message: str) -> ServingStatus:
    return ServingStatus("NOT_FOUND", message)


def invalid_argument(message: str) -> ServingStatus:
    return ServingStatus("INVALID_ARGUMENT", message)


def failed_precondition(message: str) -> ServingStatus:
    return ServingStatus("FAILED_PRECONDITION", message)


def from_tf_error(exc: object) -> ServingStatus:
    """A TensorFlow OpError (its error_code is the canonical code) as a ServingStatus, first line only."""
    code = NAMES.get(int(getattr(exc, "error_code", 2)), "UNKNOWN")
    message = str(getattr(exc, "message", "") or type(exc).__name__).strip().splitlines()
    return ServingStatus(code, message[0] if message else type(exc).__name__)
