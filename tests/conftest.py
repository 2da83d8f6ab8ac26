"""Shared fixtures. Importing `pipeline` first selects Keras 2 before TensorFlow loads."""

from pathlib import Path

import pytest

import pipeline  # noqa: F401
from pipeline import assets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return assets.minilm_dir()


@pytest.fixture(scope="session")
def minilm_vocab_path(minilm_dir) -> Path:
    return minilm_dir / "vocab.txt"
