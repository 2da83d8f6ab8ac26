"""File digests and sizes, shared by the artifact manifests, the data cache and the
size figures of exports."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gzip_size(path: Path) -> dict[str, int]:
    """Bytes of a file or of all files under a folder (in sorted order, concatenated),
    and their gzip size at level 9: the compressed size tfmot's guides report."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return data_size(b"".join(p.read_bytes() for p in files))


def data_size(data: bytes) -> dict[str, int]:
    """`{"bytes", "gzip_bytes"}` of `data`, gzip at level 9 (see `gzip_size`)."""
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9))}
