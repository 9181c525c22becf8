"""Read, write, list and publish objects on `s3://bucket/key` and local paths alike.

The S3 endpoint and credentials come from the environment (`AWS_ENDPOINT_URL` or
`MLFLOW_S3_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), which `retina stack up`
writes to `.retina/stack.env` and the cluster injects from a Secret. Retries are botocore's own
(`standard` mode), not hand-written loops.

`publish_folder` is the one way a step makes a folder of results visible: everything is written
under a temporary prefix first, then moved to the final place with the files that readers key on
(`saved_model.pb`, `index.html`, ...) moved last, then a `_SUCCESS` marker is written. A failed
step leaves only a temporary prefix that no reader looks at.
"""

from __future__ import annotations

import functools
import json
import mimetypes
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.common.errors import StorageError

SUCCESS_MARKER = "_SUCCESS"
TMP_PREFIX = "_tmp"


# --------------------------------------------------------------------------- uri helpers
def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> (`bucket`, `a/b`)."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri}")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI with single slashes."""
    uri = str(uri)
    if is_s3(uri):
        out = uri.rstrip("/")
        for p in parts:
            p = str(p).strip("/")
            if p:
                out = f"{out}/{p}"
        return out
    return str(Path(uri, *[str(p) for p in parts]))


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    uri = str(uri).rstrip("/")
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return f"s3://{bucket}/{key.rsplit('/', 1)[0]}" if "/" in key else f"s3://{bucket}"
    return str(Path(uri).parent)


# --------------------------------------------------------------------------- S3 client
def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


_client_lock = threading.Lock()


@functools.lru_cache(maxsize=8)
def _client_for(endpoint: str | None, access_key: str | None, secret_key: str | None, region: str) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(
        retries={"max_attempts": int(os.environ.get("RETINA_S3_MAX_ATTEMPTS", "5")), "mode": "standard"},
        s3={"addressing_style": "path"},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=32,
    )
    session = boto3.session.Session()
    # Credentials from the environment (or .retina/stack.env, loaded into it), passed explicitly so a stray
    # ~/.aws profile cannot stand in for them. Without them boto3's own chain applies (a pod's IAM role).
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=cfg,
                          aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None)


def s3_client() -> Any:
    """A boto3 S3 client for the endpoint and credentials in the environment (cached per endpoint/key)."""
    with _client_lock:
        access_key, secret_key = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if bool(access_key) != bool(secret_key):
            raise StorageError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (only one is set)")
        return _client_for(s3_endpoint(), access_key, secret_key, os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def ensure_buckets(buckets: Sequence[str], client: Any = None) -> list[str]:
    """Create the buckets that do not exist yet (idempotent); returns the ones created.

    `client` defaults to the environment's S3 (`s3_client()`): the local stack, or a cluster's SeaweedFS
    from the `retina-buckets` Job (infra/k8s/kubeflow).
    """
    from botocore.exceptions import ClientError

    client = client or s3_client()
    try:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    except Exception as exc:  # noqa: BLE001 - unreachable endpoint or refused credentials
        _raise_storage(f"s3://{buckets[0] if buckets else ''}", exc)
    created = []
    for bucket in buckets:
        if bucket in existing:
            continue
        try:
            client.create_bucket(Bucket=bucket)
            created.append(bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                raise StorageError(f"cannot create bucket {bucket!r}: {exc.response.get('Error', {}).get('Code')}") from exc
    return created


def _raise_storage(uri: str, exc: Exception) -> None:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise StorageError(f"no such object: {uri}") from exc
        if code == "NoSuchBucket":
            raise StorageError(f"no such bucket: {uri}") from exc
        raise StorageError(f"S3 error {code} for {uri}") from exc
    raise StorageError(f"cannot reach S3 for {uri}: {type(exc).__name__}") from exc


# --------------------------------------------------------------------------- objects
def read_bytes(uri: str) -> bytes:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - translated into a StorageError naming the URI
            _raise_storage(uri, exc)
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError as exc:
        raise StorageError(f"no such file: {uri}") from exc


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object. Local files are written to a sibling temp file and renamed (atomic)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exc:  # noqa: BLE001
            _raise_storage(uri, exc)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def exists(uri: str) -> bool:
    """True for an existing file/object, or a non-empty folder/prefix."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        from botocore.exceptions import ClientError

        if key and not key.endswith("/"):
            try:
                client.head_object(Bucket=bucket, Key=key)
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    _raise_storage(uri, exc)
        prefix = key.rstrip("/") + "/" if key else ""
        try:
            resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return False
            _raise_storage(uri, exc)
        return resp.get("KeyCount", 0) > 0
    return Path(uri).exists()


def list_uris(prefix_uri: str, suffix: str | tuple[str, ...] | None = None, recursive: bool = True) -> list[str]:
    """Files under a folder / objects under a prefix, sorted, as full URIs (temporary prefixes skipped)."""
    prefix_uri = str(prefix_uri)
    out: list[str] = []
    if is_s3(prefix_uri):
        bucket, key = split_s3(prefix_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        paginator = s3_client().get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if not recursive:
            kwargs["Delimiter"] = "/"
        try:
            for page in paginator.paginate(**kwargs):
                for obj in page.get("Contents", []):
                    out.append(f"s3://{bucket}/{obj['Key']}")
        except Exception as exc:  # noqa: BLE001
            _raise_storage(prefix_uri, exc)
    else:
        root = Path(prefix_uri)
        if not root.exists():
            return []
        it = root.rglob("*") if recursive else root.iterdir()
        out = [str(p) for p in it if p.is_file()]
    out = [u for u in out if f"/{TMP_PREFIX}/" not in u.replace("\\", "/") and not basename(u).startswith(".")]
    if suffix:
        out = [u for u in out if u.endswith(suffix)]
    return sorted(out)


def list_dirs(prefix_uri: str) -> list[str]:
    """Immediate sub-folders (names only) of a local folder or S3 prefix."""
    prefix_uri = str(prefix_uri)
    if is_s3(prefix_uri):
        bucket, key = split_s3(prefix_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        names: list[str] = []
        paginator = s3_client().get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                for cp in page.get("CommonPrefixes", []):
                    names.append(cp["Prefix"][len(prefix) :].rstrip("/"))
        except Exception as exc:  # noqa: BLE001
            _raise_storage(prefix_uri, exc)
        return sorted(names)
    root = Path(prefix_uri)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


def delete(uri: str) -> None:
    """Delete a file/object or a whole folder/prefix. Missing is fine."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        keys = [split_s3(u)[1] for u in _list_all(uri)]
        if key and not key.endswith("/"):
            keys.append(key)
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[i : i + 1000]]
            if chunk:
                client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
        return
    p = Path(uri)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


def _list_all(prefix_uri: str) -> list[str]:
    """Like list_uris but including temporary prefixes and dot files (for delete/copy of staging areas)."""
    bucket, key = split_s3(prefix_uri)
    prefix = key.rstrip("/") + "/" if key else ""
    out = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []))
    return out


def copy(src: str, dst: str) -> None:
    """Copy one file/object; server-side when both ends are on S3."""
    if is_s3(src) and is_s3(dst):
        sb, sk = split_s3(src)
        db, dk = split_s3(dst)
        try:
            s3_client().copy_object(Bucket=db, Key=dk, CopySource={"Bucket": sb, "Key": sk})
        except Exception as exc:  # noqa: BLE001
            _raise_storage(src, exc)
        return
    if not is_s3(src) and not is_s3(dst):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return
    if is_s3(dst):
        bucket, key = split_s3(dst)
        try:
            # the type a browser needs to show a report straight from the bucket (AWS stores octet-stream otherwise)
            kind = mimetypes.guess_type(key)[0]
            s3_client().upload_file(str(src), bucket, key, ExtraArgs={"ContentType": kind} if kind else None)
        except Exception as exc:  # noqa: BLE001
            _raise_storage(dst, exc)
        return
    bucket, key = split_s3(src)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        s3_client().download_file(bucket, key, str(dst))
    except Exception as exc:  # noqa: BLE001
        _raise_storage(src, exc)


def upload_dir(local_dir: str | Path, uri: str) -> list[str]:
    """Copy every file under `local_dir` to `uri` (a folder or prefix). Returns the written URIs."""
    local_dir = Path(local_dir)
    written = []
    for p in sorted(local_dir.rglob("*")):
        if p.is_file():
            dst = join(uri, p.relative_to(local_dir).as_posix())
            copy(str(p), dst)
            written.append(dst)
    return written


def local_path_for(local_dir: str | Path, rel: str) -> Path:
    """`local_dir / rel` for a key taken from storage — refused when it would land outside `local_dir`.

    An object store accepts any key (`a/../../etc/passwd`, `/abs`, `..`); a download must not turn such
    a key into a write outside the folder it was asked to fill.
    """
    root = Path(local_dir).resolve()
    parts = rel.replace("\\", "/").split("/")
    if not rel or rel.startswith("/") or any(p in ("..",) for p in parts) or Path(rel).is_absolute():
        raise StorageError(f"refusing object key that escapes the target folder: {rel!r}")
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or target == root:
        raise StorageError(f"refusing object key that escapes the target folder: {rel!r}")
    return target


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy every file under `uri` into `local_dir` keeping relative paths (keys that escape it are refused
    before anything is written)."""
    local_dir = Path(local_dir)
    uri = str(uri).rstrip("/")
    pairs = [(src, local_path_for(local_dir, src[len(uri) :].lstrip("/"))) for src in list_uris(uri)]
    local_dir.mkdir(parents=True, exist_ok=True)
    for src, dst in pairs:
        copy(src, str(dst))
    return local_dir


@contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path for a file or folder at `uri` (downloaded to a temp dir for S3; the path itself locally)."""
    if not is_s3(uri):
        if not Path(uri).exists():
            raise StorageError(f"no such file or folder: {uri}")
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="retina-") as tmp:
        bucket, key = split_s3(uri)
        from botocore.exceptions import ClientError

        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            is_file = True
        except ClientError:
            is_file = False
        if is_file:
            dst = local_path_for(tmp, basename(uri))
            copy(uri, str(dst))
            yield dst
        else:
            if not exists(uri):
                raise StorageError(f"no such object or prefix: {uri}")
            yield download_dir(uri, local_path_for(tmp, basename(uri)))


# --------------------------------------------------------------------------- atomic publish
def swap_in_dir(staging: Path, final: Path) -> None:
    """Put the complete local folder `staging` at `final` by rename (atomic on POSIX), replacing any old one.

    A reader sees the old folder or the new one, never a mix; the old one is deleted afterwards. Between
    the two renames (microseconds) the path is briefly absent: a reader that finds nothing retries or waits
    for `_SUCCESS` (`is_published`), which is how every reader here consumes a published folder.
    """
    if final.exists():
        old = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


def _ordered(rel_paths: list[str], last: Sequence[str]) -> list[str]:
    """Files whose base name is in `last` go at the end, in the order `last` names them."""
    rank = {name: i for i, name in enumerate(last)}
    early = [r for r in rel_paths if basename(r) not in rank]
    late = sorted((r for r in rel_paths if basename(r) in rank), key=lambda r: rank[basename(r)])
    return early + late


def publish_folder(local_dir: str | Path, uri: str, last: Sequence[str] = (), overwrite: bool = False) -> str:
    """Make the contents of `local_dir` visible at `uri` all at once, as far as the backend allows.

    Local disk: copy into a hidden sibling folder, then one `rename` (atomic on POSIX).
    S3 (no rename): upload under `<parent>/_tmp/<uuid>/`, then server-side copy into place with the
    files named in `last` copied last (readers key on them), then write `_SUCCESS`, then delete the
    temporary prefix. An upload that fails leaves nothing at `uri`.

    `overwrite=True` on S3 removes the old folder before the new one is copied in, so during that
    window the folder is missing or incomplete *without* `_SUCCESS`: readers must key on `_SUCCESS`
    (`is_published`) or on a file named in `last`. Reports and model versions are written to new
    prefixes and never overwritten; only small index folders use `overwrite`.
    """
    local_dir = Path(local_dir)
    uri = str(uri).rstrip("/")
    rel_paths = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    if exists(uri) and not overwrite:
        raise StorageError(f"refusing to overwrite an existing folder: {uri}")
    if not is_s3(uri):
        final = Path(uri)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            shutil.copytree(local_dir, staging)
            (staging / SUCCESS_MARKER).write_text("")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # a half copy must not linger where list_uris finds it
            raise
        swap_in_dir(staging, final)
        return uri
    staging = join(parent(uri), TMP_PREFIX, uuid.uuid4().hex)
    try:
        for rel in rel_paths:
            copy(str(local_dir / rel), join(staging, rel))
        if overwrite and exists(uri):
            delete(uri)
        try:
            for rel in _ordered(rel_paths, last):
                copy(join(staging, rel), join(uri, rel))
            write_bytes(join(uri, SUCCESS_MARKER), b"")
        except BaseException:
            delete(uri)  # take back what was already copied: no half folder stays visible
            raise
    finally:
        try:
            delete(staging)
        except Exception:  # noqa: BLE001 - best effort clean-up of the temporary prefix
            pass
    return uri


def is_published(uri: str) -> bool:
    """A folder written by `publish_folder` is complete once its `_SUCCESS` marker exists."""
    return exists(join(uri, SUCCESS_MARKER))
