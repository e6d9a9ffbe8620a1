"""benchmarks/ceiling.py: the test-split bounds the quality bar is read against."""

from __future__ import annotations

import math

import pytest
from benchmark_support import import_benchmark

ceiling = import_benchmark("ceiling")
quality = import_benchmark("quality")


def test_the_walk_goes_strong_to_weak_on_a_sqrt2_grid_and_stops_after_two_falls():
    curve = {2: 0.10, 1: 0.20, 0: 0.30, -1: 0.25, -2: 0.31, -3: 0.29, -4: 0.28, -5: 0.50}
    seen = []

    def score(lam):
        j = round(2 * math.log2(lam / 8.0))
        seen.append(j)
        return curve[j]

    points = ceiling.walk(score, centre=8.0)
    assert seen == [2, 1, 0, -1, -2, -3, -4]  # a fall, a new best (the count restarts), two falls
    assert points[0][0] == pytest.approx(16.0) and points[1][0] == pytest.approx(8.0 * 2**0.5)
    assert max(points, key=lambda p: p[1])[1] == 0.31


def test_the_walk_ends_at_its_last_step_on_a_curve_that_never_falls():
    points = ceiling.walk(lambda lam: 1.0 / lam, centre=1.0)
    assert len(points) == ceiling.FIRST_HALF_STEP - ceiling.LAST_HALF_STEP + 1


def test_the_report_gives_each_ratio_and_their_geometric_mean():
    rows = [{"data": "a", "als": 0.40, "als_setting": {"lambda": 30}, "ceiling": 0.38, "defaults": 0.36,
             "ceiling_setting": {"confidence": "log", "regularization": 17.5}},
            {"data": "b", "als": 0.20, "als_setting": {"lambda": 3}, "ceiling": 0.22, "defaults": 0.21,
             "ceiling_setting": {"confidence": "bm25", "regularization": 90.0}}]
    text = ceiling.report(rows)
    assert "0.950x" in text and "1.100x" in text and "0.900x" in text and "1.050x" in text
    geometric = text.splitlines()[3]
    assert geometric.startswith("geometric mean")
    assert f"{(0.95 * 1.10) ** 0.5:.3f}x" in geometric and f"{(0.90 * 1.05) ** 0.5:.3f}x" in geometric
    assert "Timbral's best confidence=log, regularization=17.5" in text


def test_bounds_take_each_sides_best_mean_setting_on_the_test_split_and_fit_the_defaults(capsys):
    # The reference's place is filled by popularity under a grid of two settings (implicit is not a
    # test dependency): what is checked is the choice of the best mean, not ALS's numbers.
    reference = ceiling.Method("implicit ALS", quality.popularity, [{"variant": 1}, {"variant": 2}])
    row = ceiling.bounds(quality.generated(150, 80, 1500), "small", n_seeds=1, als=reference)
    assert row["als_setting"] == {"variant": 1}  # equal means: the first setting is kept
    assert 0 < row["als"] < row["ceiling"] <= 1 and 0 < row["defaults"]
    assert set(row["ceiling_setting"]) == {"confidence", "frequency_scale", "regularization"}
    assert row["ceiling_setting"]["confidence"] in ceiling.CONFIDENCES
    err = capsys.readouterr().err
    assert "timbral log ν 0 λ" in err and "timbral bm25 ν 1 λ" in err


def test_without_implicit_the_script_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(ceiling, "implicit_methods", lambda: [])
    with pytest.raises(SystemExit):
        ceiling.main(["--generate", "10", "10", "50"])
    assert "install implicit (pip install implicit)" in capsys.readouterr().err


def test_seeds_below_one_are_refused_with_the_value(capsys):
    with pytest.raises(SystemExit):
        ceiling.main(["--generate", "10", "10", "50", "--seeds", "0"])
    assert "--seeds must be at least 1; got 0" in capsys.readouterr().err
