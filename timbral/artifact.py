"""The model directory, Timbral's only save format: NumPy arrays plus JSON metadata.

Layout of a model directory::

    model -> .model.version-XXXXXXXX/     (a symlink, flipped atomically on every save)
      arrays.npz       factors and biases, id maps, training CSR, seen CSR, popularity
      metadata.json    format version, model version and creation time, parameters, fit
                       facts, data report, metrics, timings, shapes and dtypes of every
                       array, sha256 of every file

``metadata.json["checksums"]`` holds the sha256 of ``arrays.npz`` and of the metadata
itself (of its canonical JSON encoding, sorted keys, without the ``checksums`` field),
so every parameter that moves predictions is covered and a changed byte of either
file is detected. The checksums protect against damage (a truncated copy, a bad
disk, a hand edit), not against someone with write access who recomputes them.
Arrays are never object arrays and are read with ``allow_pickle=False``: loading a
model directory cannot run code. Parameters are validated again at load.

Saving writes and fsyncs a new version directory beside the destination (under a
unique temporary name), then renames a fresh symlink over the destination (one
atomic flip) and fsyncs the parent; concurrent saves take turns for the flip (a
lock on the parent directory), and the last flip wins. A reader resolves the
symlink once and reads both files from that version, so a load racing a save sees
the old model or the new one, never a mix or an error.
The previous version is kept until the next save (a reader mid-load still finds it).
A destination that is a plain directory (written by timbral 0.1) is moved aside once,
on its first overwrite.

An array too large for the writing process may be given as :class:`ArrayParts`:
``.npy`` pieces (written by several processes, e.g. the Dask workers that own the
factor blocks) that ``arrays.npz`` receives one piece at a time. The directory is the
same format either way; only the writer's memory differs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from timbral._version import __version__
from timbral.exceptions import ArtifactError, ValidationError
from timbral.ids import IdMap
from timbral.nmf import FittedState, NMFModel

__all__ = [
    "ARRAYS_FILE",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "ArrayParts",
    "ModelArtifact",
    "array_chunks",
    "factors_version_metadata",
    "fit_record",
    "fitted_artifact",
    "item_popularity",
    "load_model",
    "model_artifact",
    "model_from_artifact",
    "read_model_dir",
    "save_model",
    "version_metadata",
    "write_model_dir",
]

#: 2: seen items stored apart from the training matrix, symlinked version directories,
#: string ids as UTF-8 bytes + offsets (1 stored fixed-width "U" arrays; it still loads).
FORMAT_VERSION = 2
ARRAYS_FILE = "arrays.npz"
METADATA_FILE = "metadata.json"
_VERSION_MARK = ".version-"

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
    "seen_indptr": (("n_users+1",), "i"),
    "seen_indices": (("nnz_seen",), "i"),
    "seen_data": (("nnz_seen",), "f"),
}
#: Arrays a format-1 directory lacks (its seen items are its training matrix).
_SINCE_2 = ("seen_indptr", "seen_indices", "seen_data")
_SIZES = ("n_users", "n_items", "n_components", "nnz", "nnz_seen")

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


#: Bytes of a piece written to ``arrays.npz`` at once (bounds the writer's extra memory).
_WRITE_BYTES = 64 << 20


@dataclass(frozen=True)
class ArrayParts:
    """An array stored as ``.npy`` pieces that concatenate along the first axis.

    Build it with :meth:`from_files`; :func:`write_model_dir` streams the pieces into
    ``arrays.npz``, so the process writing the directory never holds the whole array.

    Attributes
    ----------
    paths : tuple of str
        Local (or shared file system) paths of the pieces, in order.
    shape : tuple of int
        Shape of the concatenation.
    dtype : numpy.dtype
    """

    paths: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike[str]]) -> ArrayParts:
        """The parts of ``paths`` (read from their headers: pieces share dtype and trailing shape)."""
        if not paths:
            raise ArtifactError("ArrayParts needs at least one .npy piece; got an empty list of paths")
        pieces = []
        for path in paths:
            try:
                pieces.append(np.load(path, mmap_mode="r", allow_pickle=False))
            except (ValueError, OSError) as exc:  # not a .npy, an object array, missing
                raise ArtifactError(
                    f"piece {os.fspath(path)!r} is not a readable .npy of plain values ({exc}); "
                    "write it again with numpy.save"
                ) from None
        first = pieces[0]
        for path, piece in zip(paths, pieces, strict=True):
            if piece.dtype != first.dtype or piece.shape[1:] != first.shape[1:] or piece.ndim == 0:
                raise ArtifactError(
                    f"piece {os.fspath(path)!r} has dtype {piece.dtype} and shape {piece.shape}; every piece "
                    f"must have dtype {first.dtype} and shape (n, {', '.join(map(str, first.shape[1:]))}) "
                    "to be concatenated: rewrite it from the same blocks"
                )
        shape = (sum(p.shape[0] for p in pieces), *first.shape[1:])
        return cls(tuple(os.fspath(p) for p in paths), shape, first.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def array_chunks(array: NDArray[Any] | ArrayParts) -> Iterator[NDArray[Any]]:
    """The C-contiguous pieces of an array or of :class:`ArrayParts` (memory-mapped), in order."""
    if isinstance(array, ArrayParts):
        for path in array.paths:
            yield np.load(path, mmap_mode="r", allow_pickle=False)
    else:
        yield np.ascontiguousarray(array)


class ModelArtifact:
    """The arrays and metadata of one model directory.

    Parameters
    ----------
    arrays : mapping of str to ndarray or ArrayParts
        Exactly the arrays of the format (see ``_SCHEMA`` and ``_ID_LAYOUTS``):
        ``user_factors`` (n_users, k), ``item_factors`` (n_items, k), ``user_bias``
        (n_users,), ``item_bias`` (n_items,), the id maps of
        :meth:`timbral.ids.IdMap.to_arrays` (``user_ids`` (n_users,), or
        ``user_offsets`` (n_users + 1,) and ``user_bytes``; the same for items),
        ``user_items_indptr`` (n_users + 1,), ``user_items_indices`` (nnz,),
        ``user_items_data`` (nnz,), ``item_popularity`` (n_items,), and the interactions
        that count as seen: ``seen_indptr`` (n_users + 1,), ``seen_indices`` (nnz_seen,),
        ``seen_data`` (nnz_seen,).
    metadata : dict
        JSON-serialisable metadata. :func:`write_model_dir` adds ``format_version``,
        the sizes, ``arrays`` (shape and dtype of each) and ``checksums``.
    """

    def __init__(self, arrays: Mapping[str, NDArray[Any]], metadata: dict[str, Any]) -> None:
        self.arrays = dict(arrays)
        self.metadata = metadata

    def sizes(self) -> dict[str, int]:
        """``n_users``, ``n_items``, ``n_components``, ``nnz`` and ``nnz_seen`` read off the arrays."""
        factors = self.arrays["user_factors"]
        nnz = int(self.arrays["user_items_indices"].shape[0])
        return {
            "n_users": int(factors.shape[0]),
            "n_items": int(self.arrays["item_factors"].shape[0]),
            "n_components": int(factors.shape[1]) if factors.ndim == 2 else -1,
            "nnz": nnz,
            "nnz_seen": int(self.arrays["seen_indices"].shape[0]) if "seen_indices" in self.arrays else nnz,
        }


# -- the model <-> arrays mapping ---------------------------------------------------------


def version_metadata(model: NMFModel, created_at: datetime | None = None) -> dict[str, str]:
    """``created_at`` (ISO 8601, UTC, seconds) and ``model_version`` of a fitted model.

    ``model_version`` is ``YYYYmmddTHHMMSSZ-<first 8 hex of sha256(item factors, user
    factors)>``: every saved model records one, and a directory keeps it across loads,
    so the replicas serving one directory agree on its version (and on cache keys).
    """
    return factors_version_metadata(model.item_factors_, model.user_factors_, created_at)


def factors_version_metadata(
    item_factors: NDArray[np.floating] | ArrayParts,
    user_factors: NDArray[np.floating] | ArrayParts,
    created_at: datetime | None = None,
) -> dict[str, str]:
    """:func:`version_metadata` from the factors alone, which may be :class:`ArrayParts`
    (hashed piece by piece): a writer that never holds the model (the Dask fit) names
    it as a saved model is named."""
    created = (created_at or datetime.now(UTC)).astimezone(UTC)
    digest = hashlib.sha256()
    for factors in (item_factors, user_factors):
        for chunk in array_chunks(factors):
            digest.update(chunk.reshape(-1).view(np.uint8))
    return {
        "created_at": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "model_version": f"{created:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}",
    }


def item_popularity(user_items: sp.csr_matrix) -> NDArray[np.float64]:
    """Number of users who interacted with each item: the answer for users a model does not know."""
    return np.bincount(user_items.indices, minlength=user_items.shape[1]).astype(np.float64)



def model_artifact(
    model: NMFModel,
    *,
    users: IdMap,
    items: IdMap,
    seen: sp.csr_matrix,
    item_popularity: ArrayLike,
    metadata: Mapping[str, Any],
) -> ModelArtifact:
    """The artifact of a fitted model with its id maps, seen items and popularity.

    ``metadata`` without a ``model_version`` gets one (:func:`version_metadata`).
    """
    fit = fit_record(
        model.get_params(), regularization=model.regularization_, confidence=model.confidence_,
        alpha=model.alpha_, frequency_scale=model.frequency_scale_, search_results=model.search_results_,
        global_mean=model.global_mean_, n_iter=model.n_iter_, loss_history=model.loss_history_,
        shape=model.user_items_.shape,
    )
    arrays = {
        "user_factors": model.user_factors_,
        "item_factors": model.item_factors_,
        "user_bias": model.user_bias_,
        "item_bias": model.item_bias_,
        **users.to_arrays("user"),
        **items.to_arrays("item"),
        "user_items_indptr": model.user_items_.indptr.astype(np.int64),
        "user_items_indices": model.user_items_.indices.astype(np.int64),
        "user_items_data": model.user_items_.data,
        "item_popularity": np.asarray(item_popularity, dtype=np.float64),
        "seen_indptr": seen.indptr.astype(np.int64),
        "seen_indices": seen.indices.astype(np.int64),
        "seen_data": np.asarray(seen.data, dtype=np.float32 if seen.dtype != np.float64 else np.float64),
    }
    return fitted_artifact(arrays, fit, metadata)


def fitted_artifact(
    arrays: Mapping[str, NDArray[Any] | ArrayParts], fit: dict[str, Any], metadata: Mapping[str, Any]
) -> ModelArtifact:
    """The artifact of a fitted model's arrays, its :func:`fit_record` and the caller's metadata.

    ``metadata`` without a ``model_version`` gets one from the arrays' factors
    (:func:`factors_version_metadata`: :class:`ArrayParts` are hashed piece by piece).
    """
    meta = dict(metadata)
    if "model_version" not in meta:
        meta |= factors_version_metadata(arrays["item_factors"], arrays["user_factors"])
    return ModelArtifact(arrays, meta | {"timbral_version": __version__, "params": fit["params"], "fit": fit})


def fit_record(
    params: Mapping[str, Any],
    *,
    regularization: float,
    confidence: str | None,
    alpha: float | None,
    search_results: list[dict[str, Any]] | None,
    global_mean: float,
    frequency_scale: float = 0.0,
    n_iter: int,
    loss_history: Sequence[float],
    shape: tuple[int, int],
) -> dict[str, Any]:
    """``metadata["fit"]``: what :func:`model_from_artifact` needs besides the arrays.

    :func:`model_artifact` records a fitted model's; a writer that never holds the
    model (the Dask fit, whose factors stay on the workers) records the same facts
    from its reductions and passes :class:`ArrayParts` as the arrays.
    """
    params = dict(params)
    if not isinstance(params["random_state"], (int, type(None))):
        params["random_state"] = None  # a Generator cannot be written down
    return {
        "params": params,
        "regularization": float(regularization),
        "confidence": confidence,
        "alpha": alpha,
        "frequency_scale": float(frequency_scale),
        "search_results": search_results,
        "global_mean": float(global_mean),
        "n_iter": int(n_iter),
        "loss_history": [float(x) for x in loss_history],
        "shape": [int(n) for n in shape],
    }


def model_from_artifact(
    artifact: ModelArtifact, *, source: str
) -> tuple[NMFModel, sp.csr_matrix]:
    """The fitted model an artifact holds, and its seen-items matrix; ArtifactError names ``source``."""
    a, meta = artifact.arrays, artifact.metadata
    try:
        fields = meta["fit"]
        n_users, n_items = meta["n_users"], meta["n_items"]
        if (fields.get("shape") or [None, None]) != [n_users, n_items]:
            raise ArtifactError(
                f"{source}: metadata.json records {n_users} users × {n_items} items "
                f"but the model was fitted on shape {fields.get('shape')}; retrain the model"
            )
        training = sp.csr_matrix(
            (a["user_items_data"], a["user_items_indices"], a["user_items_indptr"]), shape=(n_users, n_items)
        )
        if "seen_indptr" in a:
            seen = sp.csr_matrix(
                (a["seen_data"], a["seen_indices"], a["seen_indptr"]), shape=(n_users, n_items)
            )
            seen.check_format(full_check=True)
        else:
            seen = training
        state = FittedState(
            a["user_factors"],
            a["item_factors"],
            a["user_bias"],
            a["item_bias"],
            float(fields["global_mean"]),
            float(fields["regularization"]),
            int(fields["n_iter"]),
            [float(x) for x in fields["loss_history"]],
            training,
            # Directories written before "auto" could choose them hold these in params only.
            fields.get("confidence"),
            fields.get("alpha"),
            fields.get("search_results"),
            fields.get("frequency_scale"),
        )
        model = NMFModel.from_fitted(fields["params"], state)
    except ArtifactError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # ValidationError is a ValueError
        detail = str(exc) if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
        raise ArtifactError(
            f"{source}: the stored model is not valid ({detail}); retrain or restore the model directory"
        ) from None
    return model, (seen if seen.has_sorted_indices else seen.sorted_indices())


def save_model(model: NMFModel, path: str | os.PathLike[str]) -> Path:
    """Write a fitted ``NMFModel`` as a model directory whose ids are 0..n-1."""
    n_users, n_items = model.user_factors_.shape[0], model.item_factors_.shape[0]
    artifact = model_artifact(
        model,
        users=IdMap.from_ids(np.arange(n_users, dtype=np.int64), name="user_id"),
        items=IdMap.from_ids(np.arange(n_items, dtype=np.int64), name="item_id"),
        seen=model.user_items_,
        item_popularity=item_popularity(model.user_items_),
        metadata={},
    )
    return write_model_dir(path, artifact)


def load_model(path: str | os.PathLike[str]) -> NMFModel:
    """The ``NMFModel`` of a model directory; a timbral 0.1 single-file ``.npz`` is refused with advice."""
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        raise ArtifactError(
            f"{str(path)!r} is a single-file model (format version {_legacy_version(path)}) written by "
            f"timbral 0.1's NMFModel.save; timbral {__version__} reads model directories only, whose "
            "metadata is covered by the checksum. Refit the model and save it again "
            "(NMFModel.save or `timbral train --output DIR`)."
        )
    return model_from_artifact(read_model_dir(path), source=f"model directory {str(path)!r}")[0]


def _legacy_version(path: Path) -> Any:
    """The ``format_version`` recorded in a single-file model, or "unknown"."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return orjson.loads(npz["metadata"].tobytes()).get("format_version", "unknown")
    except Exception:  # any damage: the refusal message stays the same
        return "unknown"


# -- directories ------------------------------------------------------------------------


def _canonical(metadata: Mapping[str, Any]) -> bytes:
    body = {key: value for key, value in metadata.items() if key != "checksums"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_npz(handle: Any, arrays: Mapping[str, NDArray[Any] | ArrayParts]) -> None:
    """``np.savez``'s layout (one stored ``.npy`` member per array), written piece by piece."""
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
                          "shape": tuple(array.shape)}
                np.lib.format.write_array_header_2_0(member, header)
                for chunk in array_chunks(array):
                    flat = chunk.reshape(-1).view(np.uint8)
                    for start in range(0, flat.size, _WRITE_BYTES):
                        member.write(flat[start : start + _WRITE_BYTES])


def _write_durably(path: Path, write: Any) -> None:
    """Create ``path``, let ``write(handle)`` fill it, and fsync it before returning."""
    with path.open("xb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _expected_shape(dims: tuple[str, ...], sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(sizes[d[:-2]] + 1 if d.endswith("+1") else sizes[d] for d in dims)


def _check_names(arrays: Mapping[str, NDArray[Any]], where: str, version: int = FORMAT_VERSION) -> None:
    layout = _layout(arrays)
    expected = set(layout) - (set(_SINCE_2) if version < 2 else set())
    missing = sorted(expected - set(arrays))
    extra = sorted(set(arrays) - expected)
    if missing or extra:
        raise ArtifactError(
            f"{where}: arrays do not match the model format (missing {missing}, unexpected "
            f"{extra}); write the directory with Recommender.save or timbral train"
        )


def _check_arrays(
    arrays: Mapping[str, NDArray[Any]], sizes: Mapping[str, int], where: str, version: int = FORMAT_VERSION
) -> None:
    """Every array present, no extras, right dtype kind and shape; else ArtifactError."""
    _check_names(arrays, where, version)
    layout = _layout(arrays)
    for name, array in arrays.items():
        dims, kinds = layout[name]
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


@contextlib.contextmanager
def _flip_lock(target: Path) -> Iterator[None]:
    """An exclusive lock on ``target``'s parent directory, held while one save flips and prunes."""
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _versions(target: Path) -> list[Path]:
    """The version directories saves to ``target`` created (``.<name>.version-*`` beside it)."""
    prefix = f".{target.name}{_VERSION_MARK}"
    return [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink()]


def write_model_dir(
    directory: str | os.PathLike[str], artifact: ModelArtifact, *, overwrite: bool = True
) -> Path:
    """Write a model directory atomically (module docstring: version directory + symlink flip).

    Parameters
    ----------
    directory : path-like
        Destination; after the call it is a symlink to a fresh version directory.
        A symlink already there (``current -> v1``) is flipped, never turned into a
        directory; what it pointed to is kept unless a previous save created it.
    artifact : ModelArtifact
        What to write; arrays are checked against the format first. An
        :class:`ArrayParts` array is streamed into ``arrays.npz`` piece by piece.
    overwrite : bool, default=True
        Replace an existing model directory at ``directory``.

    Returns
    -------
    pathlib.Path
        ``directory``.

    Raises
    ------
    ArtifactError
        If the arrays do not fit the format, or ``directory`` exists and is not
        replaceable (not ``overwrite``, or a file, or a non-model directory with files).
    """
    target = Path(directory)
    arrays = {name: a if isinstance(a, ArrayParts) else np.ascontiguousarray(a) for name, a in artifact.arrays.items()}
    where = f"cannot save to {str(target)!r}"
    _check_names(arrays, where)
    sizes = ModelArtifact(arrays, {}).sizes()
    _check_arrays(arrays, sizes, where)
    if target.exists() or target.is_symlink():
        if target.exists() and not target.is_dir():
            raise ArtifactError(f"output {str(target)!r} is a file; choose a directory path")
        if not overwrite:
            raise ArtifactError(f"output {str(target)!r} already exists; pass overwrite=True or choose another path")
        if target.is_dir() and any(target.iterdir()) and not (target / METADATA_FILE).exists():
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
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    version = target.with_name(f".{target.name}{_VERSION_MARK}{staging.name.rsplit('-', 1)[-1]}")
    link = target.with_name(f".{target.name}.link-{uuid.uuid4().hex}")
    try:
        _write_durably(staging / ARRAYS_FILE, lambda handle: _write_npz(handle, arrays))
        metadata["checksums"] = {
            ARRAYS_FILE: _sha256_file(staging / ARRAYS_FILE),
            METADATA_FILE: hashlib.sha256(_canonical(metadata)).hexdigest(),
        }
        encoded = orjson.dumps(metadata, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        _write_durably(staging / METADATA_FILE, lambda handle: handle.write(encoded))
        os.chmod(staging, 0o755)
        _fsync_dir(staging)
        with _flip_lock(target):  # concurrent saves write in parallel but flip one at a time
            os.replace(staging, version)
            previous = target.resolve() if target.is_symlink() else None
            if target.is_dir() and not target.is_symlink():
                # A plain directory cannot be swapped for a symlink in one rename: move
                # it aside once (as a version, pruned by the next save), then flip.
                os.replace(target, tempfile.mkdtemp(prefix=f".{target.name}{_VERSION_MARK}", dir=target.parent))
            os.symlink(version.name, link)
            os.replace(link, target)  # the flip: readers see the old version or the new one
            _fsync_dir(target.parent)
            for old in _versions(target):
                if old.resolve() not in (version.resolve(), previous):
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        for leftover in (staging, version):
            if leftover.exists() and not (target.is_symlink() and target.resolve() == leftover.resolve()):
                shutil.rmtree(leftover, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        raise
    artifact.metadata = metadata
    return target


def read_model_dir(directory: str | os.PathLike[str]) -> ModelArtifact:
    """Read and verify a model directory.

    Resolves ``directory`` once (a symlink being flipped by a save is read entirely
    from one version), then checks, in order: the directory and both files exist;
    ``metadata.json`` parses and has an integer ``format_version`` no newer than this
    library's; both checksums match; the arrays load without pickle and have the
    declared names, dtypes and shapes (consistent with the recorded sizes).

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
    given = Path(directory)
    path = given.resolve()
    if not path.is_dir():
        raise ArtifactError(
            f"model directory {str(given)!r} does not exist or is not a directory; "
            "pass the --output directory of `timbral train`"
        )
    meta_path, arrays_path = path / METADATA_FILE, path / ARRAYS_FILE
    for required in (meta_path, arrays_path):
        if not required.is_file():
            raise ArtifactError(
                f"{str(given)!r} is missing {required.name}; the model directory is "
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
            f"{str(given)!r} has model format version {version}, newer than the {FORMAT_VERSION} "
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
        value = metadata.get(name, metadata.get("nnz") if name == "nnz_seen" and version < 2 else None)
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
    _check_arrays(arrays, sizes, f"model directory {str(given)!r}", version)
    return ModelArtifact(arrays, metadata)
