"""The fitted model directory, written by the workers that hold its blocks.

Each factor block, each block's share of the training matrix and each item block's
popularity is saved as a ``.npy`` piece by a task next to the block, into a staging
directory beside the model directory (storage every worker can reach: a shared file
system, as ``recommend_all`` needs for reading). One more task, on a worker, writes the
model directory with :func:`timbral.artifact.write_model_dir`, which streams the pieces
into ``arrays.npz`` one at a time (:class:`timbral.artifact.ArrayParts`). The result
is the one model format (checksums, atomic symlink flip) and loads with
``Recommender.load``; the client sends file names and receives the model version.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.artifact import ArrayParts, fit_record, fitted_artifact, write_model_dir
from timbral.ids import IdMap

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["write_model"]


def _save(path: str, array: NDArray[Any]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)
    return path


def _save_training(block: sp.csr_matrix, offset: int, first: bool, stem: str) -> list[str]:
    """A user block's rows of the training CSR: indptr (shifted by the entries before it;
    the leading 0 only in the first block), indices and data, as the artifact stores them."""
    indptr = block.indptr.astype(np.int64) + offset
    return [
        _save(f"{stem}-indptr.npy", indptr if first else indptr[1:]),
        _save(f"{stem}-indices.npy", block.indices.astype(np.int64)),
        _save(f"{stem}-data.npy", block.data),
    ]


def _save_popularity(item_block: sp.csr_matrix, path: str) -> str:
    """Users per item of an item block (rows of Rᵀ): ``Recommender``'s item popularity."""
    return _save(path, np.diff(item_block.indptr).astype(np.float64))


def _write(
    directory: str,
    staging: str,
    pieces: dict[str, list[str]],
    user_ids: NDArray[Any],
    item_ids: NDArray[Any],
    fit: dict[str, Any],
    metadata: dict[str, Any],
) -> str:
    """Runs on a worker: the model directory from the pieces; returns its model version."""
    try:
        parts = {name: ArrayParts.from_files(paths) for name, paths in pieces.items()}
        n_users, n_items = parts["user_factors"].shape[0], parts["item_factors"].shape[0]
        dtype = parts["user_factors"].dtype
        arrays: dict[str, NDArray[Any] | ArrayParts] = {
            **parts,
            "user_bias": np.zeros(n_users, dtype),
            "item_bias": np.zeros(n_items, dtype),
            **IdMap.from_ids(user_ids, name="user_id").to_arrays("user"),
            **IdMap.from_ids(item_ids, name="item_id").to_arrays("item"),
        }
        for name in ("indptr", "indices", "data"):  # the seen items are the training matrix
            arrays[f"seen_{name}"] = parts[f"user_items_{name}"]
        artifact = fitted_artifact(arrays, fit, metadata)  # names the model from the factor pieces
        write_model_dir(directory, artifact)
        return str(artifact.metadata["model_version"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_model(
    client: Client,
    directory: str | os.PathLike[str],
    *,
    W: list[Future],
    H: list[Future],
    user_blocks: list[Future],
    item_blocks: list[Future],
    block_nnz: list[int],
    user_ids: Future,
    item_ids: Future,
    params: dict[str, Any],
    fit_facts: dict[str, Any],
    metadata: dict[str, Any],
) -> str:
    """Write the model directory from blocks on the workers (module docstring); returns its version.

    ``fit_facts`` are :func:`timbral.artifact.fit_record`'s keyword arguments;
    ``metadata`` is saved with the model (the data report, ...).
    """
    target = Path(directory).absolute()  # the workers' working directory may differ from ours
    stem = str(target.with_name(f".{target.name}.parts-{uuid.uuid4().hex}"))
    offsets = np.r_[0, np.cumsum(block_nnz)][:-1].tolist()
    saved_w = [client.submit(_save, f"{stem}/W-{b:05d}.npy", x, pure=False) for b, x in enumerate(W)]
    saved_h = [client.submit(_save, f"{stem}/H-{j:05d}.npy", h, pure=False) for j, h in enumerate(H)]
    saved_r = [
        client.submit(_save_training, block, int(offset), b == 0, f"{stem}/R-{b:05d}", pure=False)
        for b, (block, offset) in enumerate(zip(user_blocks, offsets, strict=True))
    ]
    saved_p = [
        client.submit(_save_popularity, block, f"{stem}/P-{j:05d}.npy", pure=False)
        for j, block in enumerate(item_blocks)
    ]
    try:
        training = client.gather(saved_r)
        pieces = {
            "user_factors": client.gather(saved_w),
            "item_factors": client.gather(saved_h),
            "user_items_indptr": [paths[0] for paths in training],
            "user_items_indices": [paths[1] for paths in training],
            "user_items_data": [paths[2] for paths in training],
            "item_popularity": client.gather(saved_p),
        }
    except BaseException:
        client.submit(shutil.rmtree, stem, ignore_errors=True, pure=False).result()
        raise
    fit = fit_record(params, **fit_facts)
    return client.submit(_write, str(target), stem, pieces, user_ids, item_ids, fit, metadata, pure=False).result()
