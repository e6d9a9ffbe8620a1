"""`timbral generate --partitions`: a partitioned Parquet dataset written in bounded memory."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from timbral.cli import main
from timbral.exceptions import ValidationError
from timbral.generate import generate_interactions, write_partitioned


def test_partitions_hold_the_same_rows_and_whole_users(tmp_path):
    summary = write_partitioned(tmp_path / "plays", 300, 120, 6_000, seed=3, n_partitions=4)
    files = sorted((tmp_path / "plays").iterdir())
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(4)]
    parts = [pq.read_table(f) for f in files]
    assert summary.n_rows == 6_000 == sum(p.num_rows for p in parts)
    assert pa.concat_tables(parts).equals(generate_interactions(300, 120, 6_000, seed=3, chunk_rows=188))
    users = [set(p.column("user_id").to_pylist()) for p in parts]
    assert all(not (a & b) for i, a in enumerate(users) for b in users[i + 1 :])
    assert max(p.num_rows for p in parts) < 2 * 6_000 / 4  # balanced up to whole users


def test_bad_partition_arguments(tmp_path):
    with pytest.raises(ValidationError, match=r"n_partitions must be an integer between 1 and n_users=10, got 11"):
        write_partitioned(tmp_path / "a", 10, 10, 50, n_partitions=11)
    with pytest.raises(ValidationError, match=r"n_partitions .* got True"):
        write_partitioned(tmp_path / "a", 10, 10, 50, n_partitions=True)
    (tmp_path / "b").mkdir()
    with pytest.raises(ValidationError, match=r"'.*b' already exists; remove it"):
        write_partitioned(tmp_path / "b", 10, 10, 50, n_partitions=2)
    with pytest.raises(ValidationError, match=r"parent directory .* does not exist"):
        write_partitioned(tmp_path / "no" / "c", 10, 10, 50, n_partitions=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # nothing half-written left behind


def test_cli_generate_partitions(tmp_path, capsys):
    out = tmp_path / "plays"
    assert main(["generate", str(out), "--users", "50", "--items", "40", "--interactions", "900",
                 "--partitions", "3"]) == 0
    assert len(list(out.glob("part-*.parquet"))) == 3
    assert pq.read_table(out).num_rows == 900
    assert "Wrote 900 interactions" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "x"), "--partitions", "0"]) == 2
    assert "--partitions: expected a positive integer, got '0'" in capsys.readouterr().err
