"""Objects moved to and from S3 directly (model folders for the cluster), with retries and end-to-end checksums.

Every upload stores the file's SHA-256 as object metadata `sha256` and asks S3 to verify the bytes in transit
(`ChecksumAlgorithm=SHA256`); afterwards HeadObject must report the same size, metadata and, for a single-part
object, the same checksum S3 computed. A download streams the object with one GET, hashes what arrives and
compares it with the `sha256` in that same response: an object overwritten or damaged behind our back is refused,
naming it, and the destination file is only replaced when the bytes check out (atomic rename).

The endpoint comes from `AWS_ENDPOINT_URL`, else `MLFLOW_S3_ENDPOINT_URL` (MinIO, moto, Ceph); credentials only
from boto3's environment chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a web-identity token, an instance
role), never from arguments or project files. Needs boto3 (`relightful[mlops]`).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from relightful.io.atomic import atomic_path
from relightful.io.digest import sha256_file

META_KEY = "sha256"
_CHUNK = 1 << 20


class ChecksumMismatch(RuntimeError):
    """An object's bytes do not match the checksum recorded for them."""


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    size: int
    sha256: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri}: not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def make_client(max_attempts: int = 5, retry_mode: str = "standard"):
    """A boto3 S3 client with botocore's retry handler (`standard` or `adaptive`, `max_attempts` tries in all)."""
    import boto3
    from botocore.config import Config

    if retry_mode not in ("standard", "adaptive", "legacy"):
        raise ValueError(f"retry_mode {retry_mode!r}: expected standard, adaptive or legacy")
    # botocore's `max_attempts` counts retries only; `total_max_attempts` counts the first try too
    config = Config(retries={"total_max_attempts": max_attempts, "mode": retry_mode})
    return boto3.client("s3", endpoint_url=endpoint_url(), config=config)


def upload_file(path: str | Path, bucket: str, key: str, client=None, max_attempts: int = 5,
                retry_mode: str = "standard") -> S3Object:
    """Upload `path` to `s3://bucket/key` and verify what S3 stored; `ChecksumMismatch` names the file when not."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file to upload not found")
    client = client or make_client(max_attempts, retry_mode)
    digest = bytes.fromhex(sha256_file(path))
    size = path.stat().st_size
    client.upload_file(str(path), bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256",
                                                          "Metadata": {META_KEY: digest.hex()}})
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    stored = head.get("Metadata", {}).get(META_KEY)
    problems = []
    if head["ContentLength"] != size:
        problems.append(f"{head['ContentLength']} bytes stored, {size} sent")
    if stored != digest.hex():
        problems.append(f"sha256 metadata {stored}, expected {digest.hex()}")
    server = head.get("ChecksumSHA256")
    single_part = "-" not in head.get("ETag", "") and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT"
    if server and single_part and server != base64.b64encode(digest).decode():
        problems.append(f"S3's SHA-256 {server} differs from the file's")
    if problems:
        raise ChecksumMismatch(f"{path} -> s3://{bucket}/{key}: upload not verified ({'; '.join(problems)})")
    return S3Object(bucket, key, size, digest.hex())


def download_file(bucket: str, key: str, path: str | Path, client=None, max_attempts: int = 5,
                  retry_mode: str = "standard") -> S3Object:
    """Download `s3://bucket/key` to `path`, replacing it only when the bytes match the object's `sha256`."""
    client = client or make_client(max_attempts, retry_mode)
    uri = f"s3://{bucket}/{key}"
    response = client.get_object(Bucket=bucket, Key=key)
    expected = response.get("Metadata", {}).get(META_KEY)
    if not expected:
        response["Body"].close()
        raise ChecksumMismatch(f"{uri}: no {META_KEY} metadata (not uploaded by relightful, or overwritten since): "
                               "cannot verify it")
    h, size = hashlib.sha256(), 0
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            for block in response["Body"].iter_chunks(_CHUNK):
                h.update(block)
                f.write(block)
                size += len(block)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != expected:
            raise ChecksumMismatch(f"{uri}: downloaded bytes have sha256 {h.hexdigest()}, the object records "
                                   f"{expected} (damaged or overwritten); {path} left unchanged")
    return S3Object(bucket, key, size, expected)


def upload_folder(folder: str | Path, bucket: str, prefix: str, client=None, max_attempts: int = 5,
                  retry_mode: str = "standard") -> list[S3Object]:
    """Upload every file below `folder` to `s3://bucket/prefix/<relative path>`, each verified."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder to upload not found")
    client = client or make_client(max_attempts, retry_mode)
    prefix = prefix.strip("/")
    return [upload_file(p, bucket, f"{prefix}/{p.relative_to(folder).as_posix()}" if prefix else
                        p.relative_to(folder).as_posix(), client)
            for p in sorted(folder.rglob("*")) if p.is_file()]


def download_folder(bucket: str, prefix: str, folder: str | Path, client=None, max_attempts: int = 5,
                    retry_mode: str = "standard") -> list[S3Object]:
    """Download every object below `s3://bucket/prefix/` into `folder` (kept relative paths), each verified."""
    client = client or make_client(max_attempts, retry_mode)
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    folder = Path(folder)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    if not keys:
        raise FileNotFoundError(f"s3://{bucket}/{prefix}: no objects to download")
    out = []
    for key in keys:
        rel = Path(key[len(prefix):])
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"s3://{bucket}/{key}: unsafe key (leaves {folder})")
        out.append(download_file(bucket, key, folder / rel, client))
    return out


__all__ = ["ChecksumMismatch", "S3Object", "download_file", "download_folder", "endpoint_url", "make_client",
           "parse_s3_uri", "upload_file", "upload_folder"]
