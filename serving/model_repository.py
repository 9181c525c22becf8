"""The TF Serving model repository: `<base>/<model>/<int version>/saved_model.pb + variables/` and `models.config`.

The same layout is read by the real `tensorflow/serving` image on a cluster and by the local server in
`serving.server`, on local disk or `s3://`. A version counts as present only once its `saved_model.pb`
exists: deploy publishes that file last (`storage.publish_folder(..., last=["saved_model.pb"])`), so a
reader never loads a half-copied version.

`models.config` is TF Serving's own text-format `ModelServerConfig`. It is read and written with the
official `tensorflow_serving.config` protos and `google.protobuf.text_format`, so what the local server
accepts is exactly what TF Serving accepts.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.errors import RetinaError, StorageError

SAVED_MODEL_FILE = "saved_model.pb"
MODELS_CONFIG_FILE = "models.config"
LABEL_STABLE = "stable"
LABEL_CANARY = "canary"


class ModelConfigError(RetinaError):
    """A models.config that cannot be parsed or names something inconsistent."""


@dataclass
class ModelEntry:
    """One `model_config_list.config` entry, in plain Python.

    `base_path` has TF Serving's meaning: the model's own folder `<repository>/<model>`, whose children are
    the integer versions (`model_entry` builds it from the repository root). `version_policy` is `"latest"` (keep the newest `num_versions`), `"all"`, or `"specific"` (serve
    exactly `versions`) — TF Serving's `model_version_policy`. `labels` maps a label (`stable`, `canary`)
    to a version number.
    """

    name: str
    base_path: str
    version_policy: str = "latest"
    num_versions: int = 1
    versions: list[int] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    platform: str = "tensorflow"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_path": self.base_path,
            "version_policy": self.version_policy,
            "num_versions": self.num_versions,
            "versions": list(self.versions),
            "labels": dict(self.labels),
            "platform": self.platform,
        }


# --------------------------------------------------------------------------- layout
def model_path(base_path: str, model_name: str) -> str:
    """`<repository>/<model>`: the folder TF Serving's `base_path` names."""
    return storage.join(base_path, model_name)


def model_entry(repository: str, model_name: str, labels: dict[str, int] | None = None,
                version_policy: str = "latest", num_versions: int = 1,
                versions: list[int] | None = None) -> ModelEntry:
    """A models.config entry for `model_name` stored under the repository root `repository`."""
    return ModelEntry(name=model_name, base_path=model_path(repository, model_name), version_policy=version_policy,
                      num_versions=num_versions, versions=list(versions or []), labels=dict(labels or {}))


def version_path(base_path: str, model_name: str, version: int) -> str:
    return storage.join(base_path, model_name, str(int(version)))


def is_version_present(version_uri: str) -> bool:
    """True once `saved_model.pb` is there (published last, so the rest of the folder is complete)."""
    return storage.exists(storage.join(version_uri, SAVED_MODEL_FILE))


def list_versions(base_path: str, model_name: str) -> list[int]:
    """Complete versions of `model_name` in the repository `base_path` (`<base_path>/<model_name>/<int>/`)."""
    return list_model_versions(model_path(base_path, model_name))


def list_model_versions(model_folder: str) -> list[int]:
    """Complete versions directly under a model folder, ascending. Non-numeric folders are ignored, as TF
    Serving ignores them (staging folders such as `.1.tmp` or `_tmp` never count)."""
    return sorted(list_version_folders(model_folder))


def list_version_folders(model_folder: str) -> dict[int, str]:
    """{version: folder name} of the complete versions under a model folder. TF Serving reads a folder
    name as a number, so `00000123` (its own example models) is version 123 — and is loaded from
    `00000123`, not from `123`. Two folders naming the same number: the first in name order wins."""
    folders: dict[int, str] = {}
    for name in sorted(storage.list_dirs(model_folder)):
        if not name.isdigit() or int(name) in folders:
            continue
        if is_version_present(storage.join(model_folder, name)):
            folders[int(name)] = name
    return folders


def next_version(base_path: str, model_name: str) -> int:
    """The version number a new export should get: one above every numeric folder (complete or not)."""
    root = model_path(base_path, model_name)
    numbers = [int(n) for n in storage.list_dirs(root) if n.isdigit()]
    return max(numbers, default=0) + 1


def download_version(version_uri: str, cache_dir: str | Path) -> Path:
    """A local folder holding the version at `version_uri` (S3 is downloaded; local paths are used as they are).

    The download goes to a hidden sibling first and is renamed into place, so a crash never leaves a cache
    entry that looks complete.
    """
    if not storage.is_s3(version_uri):
        path = Path(version_uri)
        if not (path / SAVED_MODEL_FILE).exists():
            raise StorageError(f"no {SAVED_MODEL_FILE} in model version folder: {version_uri}")
        return path
    bucket, key = storage.split_s3(version_uri)
    target = Path(cache_dir) / bucket / key
    if (target / SAVED_MODEL_FILE).exists():
        return target
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        storage.download_dir(version_uri, staging)
        if not (staging / SAVED_MODEL_FILE).exists():
            raise StorageError(f"no {SAVED_MODEL_FILE} in model version folder: {version_uri}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- models.config
def parse_models_config(text: str, source: str = "models.config") -> list[ModelEntry]:
    """Text-format `ModelServerConfig` -> entries. Raises ModelConfigError naming the file on bad input."""
    from google.protobuf import text_format

    from serving import protos

    protos.load()  # the config protos without starting TensorFlow
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"cannot parse {source}: Error parsing text-format "
                               f"tensorflow.serving.ModelServerConfig: {exc}") from exc
    if config.WhichOneof("config") == "custom_model_config":
        raise ModelConfigError(f"custom_model_config is not supported: {source}")
    entries = []
    for cfg in config.model_config_list.config:
        if not cfg.name or not cfg.base_path:
            raise ModelConfigError(f"every model in {source} needs a name and a base_path")
        policy = cfg.model_version_policy.WhichOneof("policy_choice") or "latest"
        entry = ModelEntry(
            name=cfg.name,
            base_path=cfg.base_path,
            version_policy=policy,
            num_versions=int(cfg.model_version_policy.latest.num_versions or 1),
            versions=[int(v) for v in cfg.model_version_policy.specific.versions],
            labels={k: int(v) for k, v in cfg.version_labels.items()},
            platform=cfg.model_platform or "tensorflow",
        )
        entries.append(entry)
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelConfigError(f"model named twice in {source}: {', '.join(duplicates)}")
    return entries


def sets_model_config_list(text: str) -> bool:
    """Whether a (parsable) models.config sets `model_config_list`, even an empty one. An empty file sets
    no config at all, which TF Serving's `ReloadConfig` refuses after a ModelConfigList (a half-written
    file must not unload every model), whereas `model_config_list {}` is a list that serves nothing."""
    from google.protobuf import text_format

    from serving import protos

    protos.load()
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return config.WhichOneof("config") == "model_config_list"


SUPPORTED_PLATFORMS = ("tensorflow",)
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9.]*://")


def check_model_config_list(config_list: Any) -> None:
    """TF Serving's checks of a reloaded `ModelConfigList` (server_core.cc `ValidateModelConfigList`,
    `GetPlatform`, `CreateStoragePathRoutes`), in its words: a model listed twice, a base path that is
    neither absolute nor a URI (TF Serving resolves nothing against its working directory), and a
    platform this server cannot load are refused before anything changes. Raises ModelConfigError."""
    names: set[str] = set()
    for cfg in config_list.config:
        if cfg.name in names:
            raise ModelConfigError(f"Illegal to list model {cfg.name} multiple times in config list")
        names.add(cfg.name)
    for cfg in config_list.config:
        if not cfg.base_path.startswith("/") and not _URI_SCHEME.match(cfg.base_path):
            raise ModelConfigError(f"Expected model {cfg.name} to have an absolute path or URI; got "
                                   f"base_path()={cfg.base_path}")
    for cfg in config_list.config:
        platform = _platform(cfg)
        if platform not in SUPPORTED_PLATFORMS:
            raise ModelConfigError(f"Model {cfg.name} requests unsupported platform {platform}")


def _platform(cfg: Any) -> str:
    """`model_platform`, or the deprecated `model_type` (1 = TENSORFLOW), as TF Serving's GetPlatform."""
    if cfg.model_type:
        if cfg.model_platform:
            raise ModelConfigError("Illegal setting both ModelServerConfig::model_type (deprecated) and "
                                   f"ModelServerConfig::model_platform, model name is {cfg.name}")
        if cfg.model_type != 1:
            raise ModelConfigError(f"ModelServerConfig::model_type choice {cfg.model_type} not supported.")
        return "tensorflow"
    if not cfg.model_platform:
        raise ModelConfigError("Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                               f"ModelServerConfig::model_platform, model name is {cfg.name}")
    return cfg.model_platform


def format_models_config(entries: list[ModelEntry | dict[str, Any]]) -> str:
    """Entries -> text-format `ModelServerConfig` (what TF Serving's `--model_config_file` reads)."""
    from google.protobuf import text_format

    from serving import protos

    protos.load()  # the config protos without starting TensorFlow
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for raw in entries:
        entry = raw if isinstance(raw, ModelEntry) else ModelEntry(**raw)
        cfg = config.model_config_list.config.add()
        cfg.name = entry.name
        cfg.base_path = entry.base_path
        cfg.model_platform = entry.platform
        if entry.version_policy == "all":
            cfg.model_version_policy.all.SetInParent()
        elif entry.version_policy == "specific":
            if not entry.versions:
                raise ModelConfigError(f"version_policy 'specific' without versions for model {entry.name}")
            cfg.model_version_policy.specific.versions.extend(int(v) for v in entry.versions)
        elif entry.version_policy == "latest":
            cfg.model_version_policy.latest.num_versions = int(entry.num_versions)
        else:
            raise ModelConfigError(f"unknown version_policy {entry.version_policy!r} for model {entry.name}")
        for label, version in sorted(entry.labels.items()):
            cfg.version_labels[label] = int(version)
    return text_format.MessageToString(config)


def read_models_config(uri: str) -> list[ModelEntry]:
    """Read `models.config` from a local path or `s3://`."""
    return parse_models_config(storage.read_text(uri), source=str(uri))


def write_models_config(uri: str, entries: list[ModelEntry | dict[str, Any]]) -> str:
    """Write `models.config` in one object put (local: temp file + rename), so a polling server never reads
    half a file. Returns the text written."""
    text = format_models_config(entries)
    parse_models_config(text, source=str(uri))  # refuse to publish what TF Serving would reject
    storage.write_text(uri, text)
    return text
