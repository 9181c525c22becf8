"""`ModelRef`: the one parser and formatter of model URIs.

Every step names a model the way MLflow and the CLI do — `models:/retina-fundus@champion`,
`models:/retina-fundus/3`, `runs:/<run id>/model`, `s3://bucket/key` or a local folder / `.keras` file —
and every step used to pick those strings apart on its own. This value type does it once: parse,
format back, and pin a registry alias to the version it points at right now (MLflow is imported
inside that method only, so importing this module stays cheap).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from components.common.errors import RetinaError

Kind = Literal["registry", "run", "s3", "local"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ModelRefError(RetinaError):
    """A model URI that cannot name a model."""


@dataclass(frozen=True)
class ModelRef:
    kind: Kind
    name: str = ""  # registered model name (registry) — or the run's artifact path (run)
    version: str = ""  # registry version number, as a string
    alias: str = ""  # registry alias (`champion`, `challenger`)
    run_id: str = ""
    path: str = ""  # artifact path inside a run, or the s3:// / local location itself

    # ------------------------------------------------------------------ construction
    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        uri = str(uri).strip()
        if not uri:
            raise ModelRefError("empty model URI")
        if uri.startswith("models:/"):
            return cls._parse_registry(uri)
        if uri.startswith("runs:/"):
            run_id, _, path = uri[len("runs:/") :].strip("/").partition("/")
            if not run_id:
                raise ModelRefError(f"{uri!r}: expected runs:/<run id>/<artifact path>")
            return cls("run", run_id=run_id, path=path or "model")
        if uri.startswith("s3://"):
            if len(uri) <= len("s3://") or uri[len("s3://")] == "/":
                raise ModelRefError(f"{uri!r}: expected s3://bucket/key")
            return cls("s3", path=uri)
        if _SCHEME.match(uri) and not uri.startswith("file://"):
            raise ModelRefError(f"{uri!r}: unsupported scheme (models:/, runs:/, s3:// or a local path)")
        return cls("local", path=uri[len("file://") :] if uri.startswith("file://") else uri)

    @classmethod
    def _parse_registry(cls, uri: str) -> ModelRef:
        rest = uri[len("models:/") :].strip("/")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            if not alias or "/" in alias:
                raise ModelRefError(f"{uri!r}: expected models:/<name>@<alias>")
            return cls.registry(name, alias=alias)
        name, _, version = rest.partition("/")
        if not version:
            raise ModelRefError(f"{uri!r}: name a version or an alias (models:/<name>/<n> or models:/<name>@<alias>)")
        return cls.registry(name, version=version)

    @classmethod
    def registry(cls, name: str, version: str | int = "", alias: str = "") -> ModelRef:
        if not _NAME.match(name or ""):
            raise ModelRefError(f"invalid registered model name: {name!r}")
        version = str(version)
        if bool(version) == bool(alias):
            raise ModelRefError(f"models:/{name}: give exactly one of a version or an alias")
        if version and not version.isdigit():
            raise ModelRefError(f"models:/{name}/{version}: the version must be a number")
        return cls("registry", name=name, version=version, alias=alias)

    # ------------------------------------------------------------------ views
    @property
    def uri(self) -> str:
        if self.kind == "registry":
            return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"
        if self.kind == "run":
            return f"runs:/{self.run_id}/{self.path}"
        return self.path

    def __str__(self) -> str:
        return self.uri

    @property
    def is_mlflow(self) -> bool:
        """Downloaded through MLflow (`models:/`, `runs:/`) rather than read from storage."""
        return self.kind in ("registry", "run")

    def pinned(self, client: Any | None = None) -> ModelRef:
        """The same registry model at a fixed version: an alias is resolved now, through MLflow.

        Anything else is returned unchanged. Raises ModelRefError when the alias or version is unknown.
        """
        if self.kind != "registry" or self.version:
            return self
        if client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient()
        try:
            version = client.get_model_version_by_alias(self.name, self.alias).version
        except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
            raise ModelRefError(f"registered model {self.name} has no @{self.alias} version ({type(exc).__name__})") from exc
        return ModelRef.registry(self.name, version=str(version))
