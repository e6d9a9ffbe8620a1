"""Where a model version's files live: in the database, or in object storage.

In the database (the default) each file is a sequence of ``bytea`` chunks of
:data:`CHUNK_BYTES`, written with COPY and read back with a server-side cursor, so
neither direction ever holds a whole model in one Python ``bytes``. With
``TIMBRAL_MODEL_STORE`` set to a ``file:///...`` or any fsspec URL, the files are
written under ``<store>/v<version>/`` and the database keeps that URL and the hashes.
Either way, reading verifies each file's size and sha256 against the registry before
the file is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import psycopg

from timbral.exceptions import RegistryError

__all__ = ["CHUNK_BYTES", "DATABASE", "FileRecord", "hash_file", "read_files", "remove_files",
           "version_url", "write_files"]

CHUNK_BYTES = 1 << 20
DATABASE = "database"  # the `store` column of a version whose files are chunks in the database


class FileRecord:
    """One file of a model version: its name, size and sha256."""

    __slots__ = ("name", "sha256", "size")

    def __init__(self, name: str, sha256: str, size: int) -> None:
        self.name, self.sha256, self.size = name, sha256, size


def _blocks(handle: BinaryIO) -> Iterator[bytes]:
    while block := handle.read(CHUNK_BYTES):
        yield block


def hash_file(path: Path) -> FileRecord:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for block in _blocks(handle):
            digest.update(block)
            size += len(block)
    return FileRecord(path.name, digest.hexdigest(), size)


def _fsspec():
    try:
        import fsspec
    except ImportError:
        raise RegistryError("TIMBRAL_MODEL_STORE needs fsspec; pip install 'timbral[postgres]'") from None
    return fsspec


def version_url(store: str, version: int) -> str:
    """The directory of ``version``'s files under an object-storage ``store`` URL."""
    return f"{store.rstrip('/')}/v{version}"


def write_files(conn: psycopg.Connection, version: int, directory: Path, files: list[FileRecord],
                store: str) -> None:
    """Upload ``files`` of ``directory`` for ``version`` (inside the caller's transaction)."""
    if store == DATABASE:
        with conn.cursor().copy("COPY timbral_model_chunks (version, name, seq, data) FROM STDIN") as copy:
            for record in files:
                with (directory / record.name).open("rb") as handle:
                    for seq, block in enumerate(_blocks(handle)):
                        copy.write_row((version, record.name, seq, block))
        return
    fs, root = _fsspec().core.url_to_fs(version_url(store, version))
    fs.makedirs(root, exist_ok=True)
    for record in files:
        with (directory / record.name).open("rb") as source, fs.open(f"{root}/{record.name}", "wb") as sink:
            for block in _blocks(source):
                sink.write(block)


def remove_files(store: str, version: int) -> None:
    """Delete an object-storage version directory (database chunks go with their rows)."""
    if store == DATABASE:
        return
    fs, root = _fsspec().core.url_to_fs(version_url(store, version))
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _database_blocks(conn: psycopg.Connection, version: int, name: str) -> Iterator[bytes]:
    with conn.transaction(), conn.cursor(name=f"timbral_chunks_{version}") as cursor:
        cursor.itersize = 4  # at most a few chunks in flight
        cursor.execute("SELECT data FROM timbral_model_chunks WHERE version = %s AND name = %s "
                       "ORDER BY seq", (version, name))
        for (block,) in cursor:
            yield block


def _store_blocks(store: str, version: int, name: str) -> Iterator[bytes]:
    fs, root = _fsspec().core.url_to_fs(version_url(store, version))
    try:
        with fs.open(f"{root}/{name}", "rb") as handle:
            yield from _blocks(handle)
    except FileNotFoundError:
        raise RegistryError(
            f"model version {version}: file {name!r} is missing from {version_url(store, version)}; "
            "the object store lost it, register the model again") from None


def read_files(conn: psycopg.Connection, version: int, store: str, files: list[FileRecord],
               directory: Path) -> None:
    """Stream ``version``'s files into ``directory``, each checked against its record.

    A file is written as ``.name.part`` and renamed only when its size and sha256
    match, so ``directory`` never holds a file the registry did not vouch for.

    Raises
    ------
    RegistryError
        If a file's size or sha256 differs from the registry's record.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for record in files:
        part = directory / f".{record.name}.part"
        digest, size = hashlib.sha256(), 0
        blocks = (_database_blocks(conn, version, record.name) if store == DATABASE
                  else _store_blocks(store, version, record.name))
        try:
            with part.open("wb") as handle:
                for block in blocks:
                    digest.update(block)
                    size += len(block)
                    handle.write(block)
            if size != record.size or digest.hexdigest() != record.sha256:
                raise RegistryError(
                    f"model version {version}: file {record.name!r} has {size} bytes and sha256 "
                    f"{digest.hexdigest()[:12]}…, but the registry recorded {record.size} bytes and "
                    f"{record.sha256[:12]}…; the stored copy is damaged, register the model again")
            os.replace(part, directory / record.name)
        finally:
            part.unlink(missing_ok=True)
