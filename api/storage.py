"""Blob storage for uploaded files and checkpoints: a local folder (default) or S3 (boto3)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Protocol

CHUNK = 1024 * 1024
S3_PART = 8 * 1024 * 1024
"""Part size of the S3 multipart uploads `S3Storage.concat` writes (S3 wants at least 5 MiB but for the last)."""


class Storage(Protocol):
    def put_file(self, key: str, path: Path) -> None:
        """Move or upload the local file `path` to `key` (path may be consumed)."""

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        """Stream the object in chunks. The object is opened by the call, not at the first chunk: a missing one
        raises FileNotFoundError here, before a response has started, and one deleted while it streams still
        streams whole (an open file on POSIX, an S3 GET in flight)."""

    def download(self, key: str, dest: Path) -> None:
        """Copy the object to a local path."""

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str) -> list[str]:
        """Keys under `prefix/` (a checkpoint folder), relative to it."""

    def concat(self, key: str, sources: list[str], on_chunk: Callable[[bytes], None]) -> None:
        """Write the objects `sources`, one after the other, to `key`, streaming (an upload's parts into its
        file), each chunk passed to `on_chunk` on the way (hashing). All or nothing: on an error `key` is not
        left half-written."""


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


def _s3_chunks(body: Any) -> Iterator[bytes]:  # noqa: ANN401 - botocore's StreamingBody
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def put_tree(storage: Storage, prefix: str, folder: Path, *, vanishing_ok: bool = False) -> list[str]:
    """Copy every file under `folder` to `prefix/<relative path>` (the folder itself stays). With
    `vanishing_ok`, files that disappear while the copy runs are skipped instead of failing it (a trainer
    prunes its older checkpoints while the runner uploads them); returns the relative paths skipped."""
    import tempfile

    files = sorted(Path(root, name) for root, _, names in os.walk(folder) for name in names)
    skipped = []
    for path in files:
        rel = path.relative_to(folder).as_posix()
        with tempfile.NamedTemporaryFile(dir=folder.parent, delete=False) as tmp:
            try:
                shutil.copyfile(path, tmp.name)
            except FileNotFoundError:
                os.unlink(tmp.name)
                if not vanishing_ok:
                    raise
                skipped.append(rel)
                continue
        storage.put_file(f"{prefix}/{rel}", Path(tmp.name))
    return skipped


def get_tree(storage: Storage, prefix: str, dest: Path) -> None:
    """Download `prefix/` into `dest`, atomically (a folder beside it, then a rename)."""
    part = dest.with_name(dest.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    for rel in storage.list_keys(prefix):
        target = part / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        storage.download(f"{prefix}/{rel}", target)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, dest)


def delete_tree(storage: Storage, prefix: str) -> None:
    for rel in storage.list_keys(prefix):
        storage.delete(f"{prefix}/{rel}")


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return path

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.move(str(path), tmp)
        os.replace(tmp, dest)

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        return _chunks(open(self._path(key), "rb"))  # noqa: SIM115 - _chunks closes it

    def download(self, key: str, dest: Path) -> None:
        shutil.copyfile(self._path(key), dest)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def concat(self, key: str, sources: list[str], on_chunk: Callable[[bytes], None]) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with open(tmp, "wb") as out:
                for src in sources:
                    for chunk in self.iter_bytes(src):
                        on_chunk(chunk)
                        out.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        root = self._path(prefix)
        return (
            sorted(
                p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.endswith(".part")
            )
            if root.is_dir()
            else []
        )


class S3Storage:
    def __init__(self, url: str, endpoint_url: str | None) -> None:
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path) -> None:
        # upload_file streams from disk, in multipart chunks for large files.
        self.client.upload_file(str(path), self.bucket, self._key(key))
        path.unlink(missing_ok=True)

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from e
            raise
        return _s3_chunks(body)

    def download(self, key: str, dest: Path) -> None:
        self.client.download_file(self.bucket, self._key(key), str(dest))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def concat(self, key: str, sources: list[str], on_chunk: Callable[[bytes], None]) -> None:
        # One S3 multipart upload, fed S3_PART bytes at a time from the sources read in order: the order is
        # the caller's (an upload's parts are named in order only at completion), any source size works (S3's
        # 5 MiB minimum applies to the parts sent here, not to the sources), and memory stays at one part.
        mpu = self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))
        done: list[dict] = []
        buf = bytearray()

        def flush() -> None:
            r = self.client.upload_part(Bucket=self.bucket, Key=self._key(key), UploadId=mpu["UploadId"],
                                        PartNumber=len(done) + 1, Body=bytes(buf))
            done.append({"PartNumber": len(done) + 1, "ETag": r["ETag"]})
            buf.clear()

        try:
            for src in sources:
                for chunk in self.iter_bytes(src):
                    on_chunk(chunk)
                    buf += chunk
                    if len(buf) >= S3_PART:
                        flush()
            if buf or not done:
                flush()
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=mpu["UploadId"],
                                                  MultipartUpload={"Parts": done})
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=mpu["UploadId"])
            raise

    def list_keys(self, prefix: str) -> list[str]:
        base = self._key(prefix).rstrip("/") + "/"
        out = []
        for pg in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            out += [o["Key"][len(base):] for o in pg.get("Contents", [])]
        return sorted(out)


@lru_cache
def storage_for(url: str, endpoint_url: str | None = None) -> Storage:
    if url.startswith("s3://"):
        return S3Storage(url, endpoint_url)
    return LocalStorage(Path(url))
