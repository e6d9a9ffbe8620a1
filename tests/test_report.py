"""The evaluation report (timbral.report) and `timbral evaluate --report`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from timbral.cli import main
from timbral.nmf import NMFModel
from timbral.report import evaluation_numbers, write_report
from timbral.split import random_split


class Fixed:
    """A 'model' that recommends fixed lists (training items are already left out)."""

    def __init__(self, lists: np.ndarray, search_results=None) -> None:
        self.lists = lists
        self.search_results_ = search_results
        self.loss_history_ = [3.0, 2.0, 1.5]

    def recommend_batch(self, users, k, exclude_seen=True):
        ids = self.lists[users, :k]
        return ids, -np.arange(ids.shape[1], dtype=np.float32)[None, :].repeat(len(users), 0)


def test_numbers_by_hand():
    # 3 users × 6 items. Plays per item in train: item 0 by all three, item 1 by two, item 2 by one.
    train = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]], np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]], np.float32))
    model = Fixed(np.array([[2, 3], [5, 1], [4, 3]]))
    numbers = evaluation_numbers(model, train, test, max_k=2)
    assert numbers["k"] == [1, 2] and numbers["n_users"] == 3
    # Model: user 0 hits at rank 1, user 1 at rank 2, user 2 at rank 2.
    assert numbers["curves"]["model"]["precision"] == pytest.approx([1 / 3, 3 / 6])
    assert numbers["curves"]["model"]["recall"] == pytest.approx([1 / 3, 1.0])
    assert numbers["curves"]["model"]["ndcg"][1] == pytest.approx((1 + 2 / np.log2(3)) / 3)
    # Popularity: most played unseen first, ties by index: user 0 -> [2, 3], user 1 -> [1, 2], user 2 -> [3, 4].
    assert numbers["curves"]["popularity"]["precision"] == pytest.approx([1.0, 3 / 6])
    assert [b["users"] for b in numbers["activity"]] == [1, 1, 1]
    assert [b["bucket"] for b in numbers["activity"]] == ["light", "medium", "heavy"]
    assert numbers["activity"][0]["interactions"] == [1, 1] and numbers["activity"][2]["interactions"] == [3, 3]
    bias = numbers["popularity_bias"]
    assert bias["head_items"] == 1  # 1 % of 6 items, at least one: item 0, which nobody may be shown again
    assert bias["model"] == {"head_share": 0.0, "coverage": pytest.approx(5 / 6)}
    assert bias["popularity"]["coverage"] == pytest.approx(4 / 6)
    assert numbers["loss"] == [3.0, 2.0, 1.5] and numbers["validation"] is None


def test_report_writes_a_page_and_its_figures(tmp_path):
    rng = np.random.default_rng(0)
    plays = sp.csr_matrix((rng.random((120, 60)) < 0.15).astype(np.float32) * rng.integers(1, 20, (120, 60)))
    train, test = random_split(plays, test_fraction=0.2, seed=0)
    model = NMFModel(n_components=4, max_iter=10, n_threads=1).fit(train)
    numbers = evaluation_numbers(model, train, test)
    assert len(numbers["curves"]["model"]["ndcg"]) == 50 and numbers["validation"] == model.search_results_
    page = write_report(numbers, tmp_path / "out", title="<script>alert(1)</script>")
    text = page.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text  # the title is escaped
    for name in ("metrics_at_k.png", "validation.png", "loss.png", "users_and_popularity.png"):
        assert f"src='{name}'" in text
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(numbers)  # the same numbers are JSON-ready


def test_evaluate_report_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "plays.csv"
    assert main(["generate", str(data), "--users", "120", "--items", "60", "--interactions", "2000"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(data), "--report", str(tmp_path / "r"), "--json", "--components", "4",
                 "--iterations", "10", "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"]["path"] == str(tmp_path / "r" / "index.html")
    assert (tmp_path / "r" / "index.html").exists()
    # The report scores the model train evaluated: its NDCG@10 is the one in the metrics.
    assert summary["report"]["curves"]["model"]["ndcg"][9] == pytest.approx(summary["metrics"]["ndcg@10"])


def test_report_without_matplotlib_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["evaluate", str(tmp_path / "missing.csv"), "--report", str(tmp_path / "r")]) == 2
    assert "pip install 'timbral[report]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
