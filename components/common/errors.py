"""Errors a user can act on. Each carries the offending name so the message stands on its own."""

from __future__ import annotations


class RetinaError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class ImageRejected(RetinaError):
    """An input image that cannot be used; goes to the dead-letter output, the run continues."""

    def __init__(self, image_id: str, reason: str):
        super().__init__(f"{reason}: {image_id}")
        self.image_id = image_id
        self.reason = reason


class DatasetError(RetinaError):
    """A dataset layout problem (missing CSV row, unknown label, unparsable file name, empty split)."""


class StorageError(RetinaError):
    """A storage location that does not exist or cannot be read/written."""
