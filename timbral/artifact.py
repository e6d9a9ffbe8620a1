"""The model directory: NumPy arrays plus JSON metadata, verified on every load.

Layout of a model directory::

    model/
      arrays.npz       float32 factors and biases, id maps, training CSR, popularity
      metadata.json    format version, model version, parameters, data report, metrics,
                       timings, shapes and dtypes of every array, sha256 of every file

``metadata.json["checksums"]`` holds the sha256 of ``arrays.npz`` and of the metadata
itself (of its canonical JSON encoding, sorted keys, without the ``checksums`` field),
so changing any byte of either file is detected. Arrays are never object arrays and
are read with ``allow_pickle=False``: loading a model directory cannot run code.

A directory is written beside its destination and renamed into place, so readers
(a serving process reloading its model) see either the old directory or the
complete new one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from timbral.exceptions import ArtifactError

__all__ = [
    "ARRAYS_FILE",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "ModelArtifact",
    "read_model_dir",
    "write_model_dir",
]

FORMAT_VERSION = 2  # 2: string ids as UTF-8 bytes + offsets (1 stored fixed-width "U" arrays)
ARRAYS_FILE = "arrays.npz"
METADATA_FILE = "metadata.json"

# Every array of a model directory, its dimensions in terms of the metadata sizes
# ("*": any length), and the dtype kinds allowed ("f" float, "i" signed int, "u"
# unsigned int, "U" fixed-width unicode).
_SCHEMA: dict[str, tuple[tuple[str, ...], str]] = {
    "user_factors": (("n_users", "n_components"), "f"),
    "item_factors": (("n_items", "n_components"), "f"),
    "user_bias": (("n_users",), "f"),
    "item_bias": (("n_items",), "f"),
    "user_items_indptr": (("n_users+1",), "i"),
    "user_items_indices": (("nnz",), "i"),
    "user_items_data": (("nnz",), "f"),
    "item_popularity": (("n_items",), "f"),
}
_SIZES = ("n_users", "n_items", "n_components", "nnz")

# Each id map is stored one of two ways (timbral.ids.IdMap.to_arrays): int64 ids as
# "<role>_ids", or string ids as UTF-8 "<role>_bytes" delimited by "<role>_offsets".
# Format 1 directories hold string ids as fixed-width unicode "<role>_ids"; they still load.
_ID_LAYOUTS: dict[str, tuple[dict[str, tuple[tuple[str, ...], str]], ...]] = {
    role: (
        {f"{role}_ids": ((f"n_{role}s",), "iU")},
        {f"{role}_offsets": ((f"n_{role}s+1",), "i"), f"{role}_bytes": (("*",), "u")},
    )
    for role in ("user", "item")
}


def _layout(arrays: Mapping[str, NDArray[Any]]) -> dict[str, tuple[tuple[str, ...], str]]:
    """The schema of these arrays: the fixed arrays plus the id layout each map uses."""
    layout = dict(_SCHEMA)
    for options in _ID_LAYOUTS.values():
        layout |= next((o for o in options if set(o) & set(arrays)), options[0])
    return layout


class ModelArtifact:
    """The arrays and metadata of one model directory.

    Parameters
    ----------
    arrays : mapping of str to ndarray
        Exactly the arrays of the format (see ``_SCHEMA`` and ``_ID_LAYOUTS``):
        ``user_factors`` (n_users, k), ``item_factors`` (n_items, k), ``user_bias``
        (n_users,), ``item_bias`` (n_items,), the id maps of
        :meth:`timbral.ids.IdMap.to_arrays` (``user_ids`` (n_users,), or
        ``user_offsets`` (n_users + 1,) and ``user_bytes``; the same for items),
        ``user_items_indptr`` (n_users + 1,), ``user_items_indices`` (nnz,),
        ``user_items_data`` (nnz,), ``item_popularity`` (n_items,).
    metadata : dict
        JSON-serialisable metadata. :func:`write_model_dir` adds ``format_version``,
        the sizes, ``arrays`` (shape and dtype of each) and ``checksums``.
    """

    def __init__(self, arrays: Mapping[str, NDArray[Any]], metadata: dict[str, Any]) -> None:
        self.arrays = dict(arrays)
        self.metadata = metadata

    def sizes(self) -> dict[str, int]:
        """``n_users``, ``n_items``, ``n_components`` and ``nnz`` read off the arrays."""
        factors = self.arrays["user_factors"]
        return {
            "n_users": int(factors.shape[0]),
            "n_items": int(self.arrays["item_factors"].shape[0]),
            "n_components": int(factors.shape[1]) if factors.ndim == 2 else -1,
            "nnz": int(self.arrays["user_items_indices"].shape[0]),
        }


def _canonical(metadata: Mapping[str, Any]) -> bytes:
    body = {key: value for key, value in metadata.items() if key != "checksums"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_shape(dims: tuple[str, ...], sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(sizes[d[:-2]] + 1 if d.endswith("+1") else sizes[d] for d in dims)


def _check_names(arrays: Mapping[str, NDArray[Any]], where: str) -> None:
    layout = _layout(arrays)
    missing = sorted(set(layout) - set(arrays))
    extra = sorted(set(arrays) - set(layout))
    if missing or extra:
        raise ArtifactError(
            f"{where}: arrays do not match the model format (missing {missing}, unexpected "
            f"{extra}); write the directory with Recommender.save or timbral train"
        )


def _check_arrays(arrays: Mapping[str, NDArray[Any]], sizes: Mapping[str, int], where: str) -> None:
    """Every array present, no extras, right dtype kind and shape; else ArtifactError."""
    _check_names(arrays, where)
    for name, (dims, kinds) in _layout(arrays).items():
        array = arrays[name]
        if array.dtype.kind not in kinds:
            raise ArtifactError(
                f"{where}: array {name!r} has dtype {array.dtype}, expected kind "
                f"{' or '.join(kinds)!r} (object arrays are never allowed); "
                "store id maps with IdMap.to_arrays (Recommender.save does)"
            )
        expected = _expected_shape(dims, sizes) if dims != ("*",) else (array.size,)
        if array.shape != expected:
            raise ArtifactError(
                f"{where}: array {name!r} has shape {array.shape}, expected {expected} "
                f"({', '.join(dims)}); the directory is inconsistent, retrain or restore it"
            )


def write_model_dir(
    directory: str | os.PathLike[str], artifact: ModelArtifact, *, overwrite: bool = True
) -> Path:
    """Write a model directory atomically.

    The files go to a temporary directory beside ``directory`` which is then renamed
    into place; an existing directory is replaced only when ``overwrite``.

    Parameters
    ----------
    directory : path-like
        Destination directory.
    artifact : ModelArtifact
        What to write; arrays are checked against the format first.
    overwrite : bool, default=True
        Replace an existing model directory at ``directory``.

    Returns
    -------
    pathlib.Path
        The written directory.

    Raises
    ------
    ArtifactError
        If the arrays do not fit the format, or ``directory`` exists and is not
        replaceable (not ``overwrite``, or a file, or a non-model directory with files).
    """
    target = Path(directory)
    arrays = {name: np.ascontiguousarray(a) for name, a in artifact.arrays.items()}
    where = f"cannot save to {str(target)!r}"
    _check_names(arrays, where)
    sizes = ModelArtifact(arrays, {}).sizes()
    _check_arrays(arrays, sizes, where)
    if target.exists():
        if not target.is_dir():
            raise ArtifactError(f"output {str(target)!r} is a file; choose a directory path")
        if not overwrite:
            raise ArtifactError(f"output {str(target)!r} already exists; pass overwrite=True or choose another path")
        if any(target.iterdir()) and not (target / METADATA_FILE).exists():
            raise ArtifactError(
                f"output {str(target)!r} is a non-empty directory that holds no model; "
                "choose an empty or new directory so nothing else is replaced"
            )
    target.parent.mkdir(parents=True, exist_ok=True)

    metadata = {key: value for key, value in artifact.metadata.items() if key != "checksums"}
    metadata["format_version"] = FORMAT_VERSION
    metadata.update(sizes)
    metadata["arrays"] = {
        name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in sorted(arrays.items())
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        np.savez(tmp / ARRAYS_FILE, **arrays)
        metadata["checksums"] = {
            ARRAYS_FILE: _sha256_file(tmp / ARRAYS_FILE),
            METADATA_FILE: hashlib.sha256(_canonical(metadata)).hexdigest(),
        }
        (tmp / METADATA_FILE).write_bytes(
            orjson.dumps(metadata, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        os.chmod(tmp, 0o755)
        if target.exists():  # swap: move the old one aside, the new one in, then delete
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    artifact.metadata = metadata
    return target


def read_model_dir(directory: str | os.PathLike[str]) -> ModelArtifact:
    """Read and verify a model directory.

    Checks, in order: the directory and both files exist; ``metadata.json`` parses and
    has an integer ``format_version`` no newer than this library's; both checksums
    match; the arrays load without pickle and have the declared names, dtypes and
    shapes (consistent with ``n_users``, ``n_items``, ``n_components``, ``nnz``).

    Parameters
    ----------
    directory : path-like
        A directory written by :func:`write_model_dir`.

    Returns
    -------
    ModelArtifact

    Raises
    ------
    ArtifactError
        The first check that fails, naming the file or field and what to do.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ArtifactError(
            f"model directory {str(path)!r} does not exist or is not a directory; "
            "pass the --output directory of `timbral train`"
        )
    meta_path, arrays_path = path / METADATA_FILE, path / ARRAYS_FILE
    for required in (meta_path, arrays_path):
        if not required.is_file():
            raise ArtifactError(
                f"{str(path)!r} is missing {required.name}; the model directory is "
                "incomplete, retrain it or copy the whole directory again"
            )
    try:
        raw = meta_path.read_bytes()
        metadata = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(
            f"{str(meta_path)!r} is not valid JSON ({exc}); the file is damaged, retrain or restore it"
        ) from None
    if not isinstance(metadata, dict):
        raise ArtifactError(f"{str(meta_path)!r} must hold a JSON object; the file is damaged, retrain or restore it")

    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ArtifactError(
            f"{str(meta_path)!r}: field 'format_version' must be an integer, got {version!r}; "
            "the file is damaged, retrain or restore it"
        )
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{str(path)!r} has model format version {version}, newer than the {FORMAT_VERSION} "
            "this timbral reads; upgrade timbral (pip install -U timbral) to load it"
        )
    if version < 1:
        raise ArtifactError(f"{str(meta_path)!r}: format_version {version} is not a valid version; retrain the model")

    checksums = metadata.get("checksums")
    if not isinstance(checksums, dict) or not {ARRAYS_FILE, METADATA_FILE} <= set(checksums):
        raise ArtifactError(
            f"{str(meta_path)!r}: field 'checksums' must list {ARRAYS_FILE} and {METADATA_FILE}; "
            "the file is damaged, retrain or restore it"
        )
    if hashlib.sha256(_canonical(metadata)).hexdigest() != checksums[METADATA_FILE]:
        raise ArtifactError(
            f"{str(meta_path)!r} does not match its sha256 checksum: the metadata was edited "
            "or damaged; retrain or restore the model directory"
        )
    if _sha256_file(arrays_path) != checksums[ARRAYS_FILE]:
        raise ArtifactError(
            f"{str(arrays_path)!r} does not match its sha256 checksum in {METADATA_FILE}: "
            "the file was modified or damaged; retrain or restore the model directory"
        )

    sizes: dict[str, int] = {}
    for name in _SIZES:
        value = metadata.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ArtifactError(
                f"{str(meta_path)!r}: field {name!r} must be a non-negative integer, got {value!r}; "
                "retrain or restore the model directory"
            )
        sizes[name] = value
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(
            f"cannot read {str(arrays_path)!r} ({exc}); it must be an npz of plain arrays, "
            "retrain or restore the model directory"
        ) from None
    _check_arrays(arrays, sizes, f"model directory {str(path)!r}")
    return ModelArtifact(arrays, metadata)
