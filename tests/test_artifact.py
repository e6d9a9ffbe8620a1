"""Model directories: round trip, and every kind of damage refused with a clear message."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from timbral.artifact import FORMAT_VERSION, ModelArtifact, _canonical, read_model_dir, write_model_dir
from timbral.exceptions import ArtifactError


def make_artifact(n_users=7, n_items=5, k=3, ids="int"):
    rng = np.random.default_rng(0)
    indptr = np.array([0, 2, 3, 3, 5, 6, 8, 9], dtype=np.int64)
    nnz = int(indptr[-1])
    user_ids = np.arange(100, 100 + n_users) if ids == "int" else np.array([f"user-{j}" for j in range(n_users)])
    arrays = {
        "user_factors": rng.random((n_users, k), dtype=np.float32),
        "item_factors": rng.random((n_items, k), dtype=np.float32),
        "user_bias": np.zeros(n_users, np.float32),
        "item_bias": np.zeros(n_items, np.float32),
        "user_ids": user_ids,
        "item_ids": np.array(["a", "b", "c", "d", "é"]),
        "user_items_indptr": indptr,
        "user_items_indices": rng.integers(0, n_items, nnz),
        "user_items_data": rng.random(nnz, dtype=np.float32),
        "item_popularity": rng.random(n_items),
        "seen_indptr": indptr,
        "seen_indices": rng.integers(0, n_items, nnz),
        "seen_data": np.ones(nnz, np.float32),
    }
    return ModelArtifact(arrays, {"model_version": "v1", "metrics": {"ndcg@10": 0.25}})


@pytest.fixture
def model_dir(tmp_path):
    return write_model_dir(tmp_path / "model", make_artifact())


@pytest.mark.parametrize("ids", ["int", "str"])
def test_round_trip(tmp_path, ids):
    original = make_artifact(ids=ids)
    write_model_dir(tmp_path / "m", original)
    back = read_model_dir(tmp_path / "m")
    assert set(back.arrays) == set(original.arrays)
    for name, array in original.arrays.items():
        assert back.arrays[name].dtype == array.dtype
        assert_array_equal(back.arrays[name], array)
    meta = back.metadata
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["metrics"] == {"ndcg@10": 0.25}
    assert (meta["n_users"], meta["n_items"], meta["n_components"], meta["nnz"]) == (7, 5, 3, 9)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["arrays.npz", "metadata.json"]
    # no temporary left behind: the name and the one version directory it points to
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[1] == "m" and names[0].startswith(".m.version-")
    assert (tmp_path / "m").resolve() == tmp_path / names[0]


def test_overwrite_replaces_and_refuses_foreign_directories(tmp_path, model_dir):
    write_model_dir(model_dir, make_artifact())  # a model directory is replaced
    with pytest.raises(ArtifactError, match="already exists; pass overwrite=True"):
        write_model_dir(model_dir, make_artifact(), overwrite=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="non-empty directory that holds no model"):
        write_model_dir(tmp_path / "notes", make_artifact())
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is a file; choose a directory path"):
        write_model_dir(tmp_path / "file", make_artifact())


def test_write_refuses_object_arrays_and_bad_shapes(tmp_path):
    artifact = make_artifact()
    artifact.arrays["item_ids"] = np.array(["a", 1, None, "d", "e"], dtype=object)
    with pytest.raises(ArtifactError, match=r"'item_ids' has dtype object.*object arrays are never allowed"):
        write_model_dir(tmp_path / "m", artifact)
    artifact = make_artifact()
    artifact.arrays["item_bias"] = np.zeros(4, np.float32)
    with pytest.raises(ArtifactError, match=r"'item_bias' has shape \(4,\), expected \(5,\)"):
        write_model_dir(tmp_path / "m", artifact)
    artifact = make_artifact()
    del artifact.arrays["item_popularity"]
    with pytest.raises(ArtifactError, match=r"missing \['item_popularity'\]"):
        write_model_dir(tmp_path / "m", artifact)


@pytest.mark.parametrize("name", ["arrays.npz", "metadata.json"])
def test_missing_file_is_refused(model_dir, name):
    (model_dir / name).unlink()
    with pytest.raises(ArtifactError, match=f"is missing {name}; the model directory is incomplete"):
        read_model_dir(model_dir)


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist or is not a directory"):
        read_model_dir(tmp_path / "nope")


def test_tampered_arrays_are_refused(model_dir):
    raw = bytearray((model_dir / "arrays.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (model_dir / "arrays.npz").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="arrays.npz' does not match its sha256 checksum"):
        read_model_dir(model_dir)


def test_tampered_metadata_is_refused(model_dir):
    meta = json.loads((model_dir / "metadata.json").read_text())
    meta["metrics"]["ndcg@10"] = 0.99
    (model_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="metadata.json' does not match its sha256 checksum"):
        read_model_dir(model_dir)


def test_unparseable_metadata_is_refused(model_dir):
    (model_dir / "metadata.json").write_text('{"format_version": 1, ')
    with pytest.raises(ArtifactError, match="is not valid JSON.*retrain or restore it"):
        read_model_dir(model_dir)


def test_future_format_is_refused(model_dir):
    meta = json.loads((model_dir / "metadata.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (model_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=f"format version {FORMAT_VERSION + 1}, newer .* upgrade timbral"):
        read_model_dir(model_dir)


def test_shape_mismatch_is_refused(tmp_path, model_dir):
    """A consistent-looking directory whose arrays disagree with its declared sizes."""
    artifact = read_model_dir(model_dir)
    artifact.metadata["n_users"] = 8  # arrays were written for 7 users
    artifact.metadata.pop("checksums")
    # Re-sign the edited metadata as a careless tool would, so only the shapes are wrong.
    artifact.metadata["checksums"] = {
        "arrays.npz": json.loads((model_dir / "metadata.json").read_text())["checksums"]["arrays.npz"],
        "metadata.json": hashlib.sha256(_canonical(artifact.metadata)).hexdigest(),
    }
    (model_dir / "metadata.json").write_text(json.dumps(artifact.metadata))
    with pytest.raises(ArtifactError, match=r"'user_factors' has shape \(7, 3\), expected \(8, 3\)"):
        read_model_dir(model_dir)


def test_array_parts_stream_into_the_same_format(tmp_path):
    """Arrays given as .npy pieces (as Dask workers write them) load back as one array; pieces that
    do not concatenate, or are not plain .npy files, are refused with the piece's name."""
    from timbral.artifact import ArrayParts

    artifact = make_artifact()
    factors = artifact.arrays["user_factors"]
    for i, rows in enumerate((factors[:2], factors[2:])):
        np.save(tmp_path / f"W-{i}.npy", rows)
    artifact.arrays["user_factors"] = ArrayParts.from_files([tmp_path / "W-0.npy", tmp_path / "W-1.npy"])
    loaded = read_model_dir(write_model_dir(tmp_path / "model", artifact))
    np.testing.assert_array_equal(loaded.arrays["user_factors"], factors)
    assert loaded.metadata["arrays"]["user_factors"]["shape"] == list(factors.shape)
    np.save(tmp_path / "odd.npy", factors[:, :1])
    with pytest.raises(ArtifactError, match=r"piece '.*odd.npy' has dtype .* every piece must have dtype"):
        ArrayParts.from_files([tmp_path / "W-0.npy", tmp_path / "odd.npy"])
    np.save(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ArtifactError, match=r"piece '.*objects.npy' is not a readable .npy of plain values"):
        ArrayParts.from_files([tmp_path / "objects.npy"])
    with pytest.raises(ArtifactError, match=r"needs at least one .npy piece"):
        ArrayParts.from_files([])
