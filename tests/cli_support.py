"""Data the command-line tests share."""

from __future__ import annotations

from pathlib import Path

from timbral.cli import main


def generated_plays_csv(directory: Path) -> Path:
    """A small play-count CSV written by ``timbral generate`` (150 users, 80 items, 3,000 plays, seed 2)."""
    path = directory / "plays.csv"
    assert main(["generate", str(path), "--users", "150", "--items", "80", "--interactions", "3000",
                 "--seed", "2"]) == 0
    return path
