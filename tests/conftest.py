"""Shared fixtures: session-scoped tiny runs that many tests read. Importing `core` first
selects Keras 2 before TensorFlow loads; the helpers are in tests/helpers.py."""

from pathlib import Path

import numpy as np
import pytest

import core  # noqa: F401
from models import assets
from tests.helpers import EXPORT, PRUNE, QUANTIZE, TRAINED, copy_run, run_stage


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return assets.minilm_dir()


@pytest.fixture(scope="session")
def minilm_vocab_path(minilm_dir) -> Path:
    return minilm_dir / "vocab.txt"


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory):
    """Overrides for a task a tiny model must learn: the label is which of two words the
    text contains."""
    folder = tmp_path_factory.mktemp("easy")
    rng = np.random.default_rng(0)
    filler = ["the", "movie", "was", "a", "plot", "with", "actors", "and", "scenes", "it"]
    lines = ["text,label"]
    for i in range(480):
        words = list(rng.choice(filler, size=rng.integers(3, 12)))
        words.insert(int(rng.integers(0, len(words))), "wonderful" if i % 2 else "awful")
        lines.append(f"{' '.join(words)},{'pos' if i % 2 else 'neg'}")
    path = folder / "easy.csv"
    path.write_text("\n".join(lines) + "\n")
    return [f"data.tfds_data_dir={folder / 'tfds'}", "data.source=files", f"data.path={path}",
            "data.labels=[neg, pos]", "data.max_examples=0"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, easy_data):
    """prepare + finetune + evaluate of a tiny model on the easy task (read-only)."""
    run_dir = tmp_path_factory.mktemp("trained")
    for stage in ("prepare", "finetune", "evaluate"):
        assert run_stage(stage, run_dir, *easy_data, *TRAINED) == 0
    return run_dir


@pytest.fixture(scope="session")
def distilled_run(trained_run, tmp_path_factory, easy_data):
    """The trained run plus the distill stage at tiny.yaml's student: 1 of 2 layers, 1
    of 2 heads, 32 of 64 FFN neurons, the training split's vocabulary (read-only)."""
    run_dir = copy_run(trained_run, tmp_path_factory.mktemp("distilled"),
                       ("prepare", "finetune", "evaluate"))
    assert run_stage("distill", run_dir, *easy_data, *TRAINED) == 0
    return run_dir


@pytest.fixture(scope="session")
def quantized_run(distilled_run, tmp_path_factory, easy_data):
    """The distilled run, then prune and quantize of every source: the float, pruned
    and student models (read-only)."""
    run_dir = copy_run(distilled_run, tmp_path_factory.mktemp("quantized"),
                       ("prepare", "finetune", "evaluate", "distill"))
    assert run_stage("prune", run_dir, *easy_data, *TRAINED, *PRUNE) == 0
    assert run_stage("quantize", run_dir, *easy_data, *TRAINED, *PRUNE, *QUANTIZE) == 0
    return run_dir


@pytest.fixture(scope="session")
def exported_run(quantized_run, tmp_path_factory, easy_data):
    """The quantized run plus `slimbert export` of every default target (read-only)."""
    run_dir = copy_run(quantized_run, tmp_path_factory.mktemp("exported"))
    assert run_stage("export", run_dir, *easy_data, *TRAINED, *PRUNE, *QUANTIZE,
                     *EXPORT) == 0
    return run_dir
