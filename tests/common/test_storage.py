"""storage.py on both backends: a local folder and SeaweedFS S3 (the session `stack`)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from components.common import storage
from components.common.errors import StorageError


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.stack)])
def root(request, tmp_path: Path) -> str:
    """A fresh empty folder: a tmp dir, or a unique prefix in the `datasets` bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    request.getfixturevalue("stack")
    return f"s3://datasets/test-storage/{uuid.uuid4().hex}"


def _tree(tmp_path: Path, files: dict[str, bytes]) -> Path:
    src = tmp_path / f"src-{uuid.uuid4().hex[:6]}"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return src


def test_write_read_list_exists_delete(root):
    storage.write_bytes(storage.join(root, "a.bin"), b"\x00\xffbytes")
    storage.write_json(storage.join(root, "sub", "b.json"), {"label": 3})
    storage.write_text(storage.join(root, "sub", "deeper", "c.txt"), "grade")

    assert storage.read_bytes(storage.join(root, "a.bin")) == b"\x00\xffbytes"
    assert storage.read_json(storage.join(root, "sub", "b.json")) == {"label": 3}
    assert storage.list_uris(root) == [
        storage.join(root, "a.bin"),
        storage.join(root, "sub", "b.json"),
        storage.join(root, "sub", "deeper", "c.txt"),
    ]
    assert storage.list_uris(root, recursive=False) == [storage.join(root, "a.bin")]
    assert storage.list_uris(root, suffix=".txt") == [storage.join(root, "sub", "deeper", "c.txt")]
    assert storage.list_dirs(root) == ["sub"]
    assert storage.exists(storage.join(root, "sub"))  # a non-empty folder / prefix
    assert storage.exists(storage.join(root, "a.bin"))
    assert not storage.exists(storage.join(root, "a.bi"))  # no prefix matching by accident

    storage.delete(storage.join(root, "sub"))
    assert storage.list_uris(root) == [storage.join(root, "a.bin")]
    storage.delete(storage.join(root, "never-there"))  # missing is fine


def test_missing_object_is_a_storage_error_naming_it(root):
    missing = storage.join(root, "nope", "10_left.jpeg")
    with pytest.raises(StorageError, match="10_left.jpeg"):
        storage.read_bytes(missing)


def test_copy_upload_download_and_local_copy(root, tmp_path):
    src = _tree(tmp_path, {"x.txt": b"x", "d/y.txt": b"y"})
    written = storage.upload_dir(src, storage.join(root, "up"))
    assert sorted(written) == [storage.join(root, "up", "d", "y.txt"), storage.join(root, "up", "x.txt")]
    storage.copy(storage.join(root, "up", "x.txt"), storage.join(root, "copied.txt"))
    assert storage.read_bytes(storage.join(root, "copied.txt")) == b"x"

    back = storage.download_dir(storage.join(root, "up"), tmp_path / "back")
    assert (back / "d" / "y.txt").read_bytes() == b"y"
    with storage.local_copy(storage.join(root, "up")) as folder:
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
            "d/y.txt",
            "x.txt",
        ]
    with storage.local_copy(storage.join(root, "copied.txt")) as file:
        assert file.read_bytes() == b"x"
    with pytest.raises(StorageError):
        with storage.local_copy(storage.join(root, "absent")):
            pass


def test_publish_folder_is_complete_marked_and_refuses_overwrite(root, tmp_path):
    src = _tree(tmp_path, {"index.html": b"<html>", "img/a.png": b"png", "summary.json": b"{}"})
    target = storage.join(root, "report")
    assert not storage.is_published(target)
    storage.publish_folder(src, target, last=["index.html"])
    assert storage.is_published(target)
    assert storage.list_uris(target) == [
        storage.join(target, storage.SUCCESS_MARKER),
        storage.join(target, "img", "a.png"),
        storage.join(target, "index.html"),
        storage.join(target, "summary.json"),
    ]
    with pytest.raises(StorageError, match="report"):
        storage.publish_folder(src, target)

    newer = _tree(tmp_path, {"index.html": b"<html>v2"})
    storage.publish_folder(newer, target, overwrite=True)
    assert storage.read_bytes(storage.join(target, "index.html")) == b"<html>v2"
    assert not storage.exists(storage.join(target, "img", "a.png"))  # nothing of the old folder stays
    # no staging leftovers beside the target
    assert storage.list_uris(root) == [
        storage.join(target, storage.SUCCESS_MARKER),
        storage.join(target, "index.html"),
    ]


def test_publish_copies_last_files_last_then_success(root, tmp_path, monkeypatch):
    """Readers key on `last` files (saved_model.pb, index.html): they must appear after everything else."""
    if not storage.is_s3(root):
        pytest.skip("a local publish appears by one rename: there is no order to observe")
    src = _tree(
        tmp_path, {"saved_model.pb": b"pb", "variables/v.data": b"v", "a.txt": b"a", "index.html": b"h"}
    )
    target = storage.join(root, "model")
    order: list[str] = []
    real_copy, real_write = storage.copy, storage.write_bytes

    def spy_copy(src_uri: str, dst: str) -> None:
        real_copy(src_uri, dst)
        if dst.startswith(target + "/"):
            order.append(dst[len(target) + 1 :])

    def spy_write(uri: str, data: bytes) -> None:
        real_write(uri, data)
        if uri.startswith(target + "/"):
            order.append(uri[len(target) + 1 :])

    monkeypatch.setattr(storage, "copy", spy_copy)
    monkeypatch.setattr(storage, "write_bytes", spy_write)
    storage.publish_folder(src, target, last=["saved_model.pb", "index.html"])
    assert order[-3:] == ["saved_model.pb", "index.html", storage.SUCCESS_MARKER]
    assert sorted(order[:-3]) == ["a.txt", "variables/v.data"]
    assert storage.is_published(target)


@pytest.mark.parametrize("fail_at", ["staging", "final"])
def test_failed_publish_leaves_nothing_visible(root, tmp_path, monkeypatch, fail_at):
    src = _tree(tmp_path, {f"part-{i}.bin": bytes([i]) * 10 for i in range(5)} | {"index.html": b"h"})
    target = storage.join(root, "out")
    storage.write_text(storage.join(root, "neighbour.txt"), "stays")
    calls = {"n": 0}

    if storage.is_s3(target):
        real_copy = storage.copy

        def failing_copy(src_uri: str, dst: str) -> None:
            into_final = dst.startswith(target + "/")
            if (fail_at == "final") == into_final:
                calls["n"] += 1
                if calls["n"] == 3:  # some files are already in place when it breaks
                    raise StorageError(f"injected failure writing {dst}")
            real_copy(src_uri, dst)

        monkeypatch.setattr(storage, "copy", failing_copy)
    else:
        if fail_at == "final":
            pytest.skip("a local publish has no 'final' phase: the folder appears by one rename")
        real_copytree = storage.shutil.copytree

        def failing_copy_function(s: str, d: str) -> str:
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(f"injected failure writing {d}")
            return storage.shutil.copy2(s, d)

        def copytree(src_dir, dst_dir, *args, **kwargs):
            return real_copytree(src_dir, dst_dir, *args, copy_function=failing_copy_function, **kwargs)

        monkeypatch.setattr(storage.shutil, "copytree", copytree)

    with pytest.raises((StorageError, OSError)):
        storage.publish_folder(src, target, last=["index.html"])
    assert calls["n"] >= 3
    monkeypatch.undo()
    assert not storage.exists(target)
    assert not storage.is_published(target)
    # nothing half-written anywhere a reader lists: not the target, not a staging prefix
    assert storage.list_uris(root) == [storage.join(root, "neighbour.txt")]
    if not storage.is_s3(root):
        assert sorted(os.listdir(root)) == ["neighbour.txt"]
    else:
        assert storage._list_all(root) == [storage.join(root, "neighbour.txt")]


@pytest.mark.stack
def test_ensure_buckets_creates_only_what_is_missing(stack, capsys):
    from components.cli import main

    fresh = f"retina-test-{uuid.uuid4().hex[:8]}"
    assert storage.ensure_buckets(["raw", fresh]) == [fresh]
    assert storage.ensure_buckets(["raw", fresh]) == []
    storage.write_bytes(f"s3://{fresh}/x", b"1")
    assert storage.read_bytes(f"s3://{fresh}/x") == b"1"
    assert main(["buckets"]) == 0  # what the cluster's retina-buckets Job runs
    assert main(["stack", "buckets"]) == 0  # the local alias
    out = capsys.readouterr().out
    assert "pipeline-root" in out and "buckets ready on http://127.0.0.1:" in out
    assert stack.env["AWS_SECRET_ACCESS_KEY"] not in out


def test_half_set_s3_credentials_are_refused_by_name(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "only-the-access-key")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(StorageError, match="set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        storage.s3_client()


@pytest.mark.parametrize("key", ["../outside.txt", "a/../../outside.txt", "/etc/passwd", "..", "a/..", ""])
def test_keys_that_escape_the_target_folder_are_refused(tmp_path, key):
    with pytest.raises(StorageError, match="escapes the target folder"):
        storage.local_path_for(tmp_path / "dst", key)
    assert storage.local_path_for(tmp_path / "dst", "a/b.txt") == (tmp_path / "dst" / "a" / "b.txt").resolve()

