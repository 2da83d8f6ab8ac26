"""Shared fixtures. Importing `pipeline` first selects Keras 2 before TensorFlow loads."""

import json
from pathlib import Path

import numpy as np
import pytest

import pipeline  # noqa: F401
from models import assets

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def run_stage(stage, run_dir, *overrides, config=TINY):
    """Run one stage in-process like `slimbert <stage>`; returns the exit code."""
    from pipeline.cli import main

    args = [stage, "--config", config, "--run-dir", str(run_dir)]
    for item in overrides:
        args += ["--set", item]
    return main(args)


def manifest(run_dir, stage):
    return json.loads((Path(run_dir) / stage / "manifest.json").read_text())


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


TRAINED = ["finetune.epochs=4", "finetune.batch_size=16", "finetune.learning_rate=0.002",
           "evaluate.min_accuracy=0.9"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, easy_data):
    """prepare + finetune + evaluate of a tiny model on the easy task (read-only)."""
    run_dir = tmp_path_factory.mktemp("trained")
    for stage in ("prepare", "finetune", "evaluate"):
        assert run_stage(stage, run_dir, *easy_data, *TRAINED) == 0
    return run_dir


PRUNE = ["prune.final_sparsity=0.75", "prune.frequency=1", "prune.train.epochs=2",
         "prune.train.batch_size=16", "prune.train.learning_rate=0.001"]
QUANTIZE = ["quantize.post_training=[cpu, int8]",
            "quantize.train.learning_rate=0.0002"]


@pytest.fixture(scope="session")
def quantized_run(trained_run, tmp_path_factory, easy_data):
    """The trained run's prepare/finetune/evaluate, then prune and quantize (read-only)."""
    import shutil

    run_dir = tmp_path_factory.mktemp("quantized")
    for stage in ("prepare", "finetune", "evaluate"):
        shutil.copytree(trained_run / stage, run_dir / stage)
    assert run_stage("prune", run_dir, *easy_data, *TRAINED, *PRUNE) == 0
    assert run_stage("quantize", run_dir, *easy_data, *TRAINED, *PRUNE, *QUANTIZE) == 0
    return run_dir


def copy_run(source, target, stages=("prepare", "finetune", "evaluate", "prune", "quantize")):
    """Copy the named stage artifacts of a run into `target` (returned)."""
    import shutil

    for stage in stages:
        shutil.copytree(Path(source) / stage, Path(target) / stage)
    return Path(target)


@pytest.fixture(scope="session")
def exported_run(quantized_run, tmp_path_factory, easy_data):
    """The quantized run plus `slimbert export` of every default target (read-only)."""
    run_dir = copy_run(quantized_run, tmp_path_factory.mktemp("exported"))
    assert run_stage("export", run_dir, *easy_data, *TRAINED, *PRUNE, *QUANTIZE,
                     "export.compare_kernels=[gpu, int8, qat, pruned-qat]") == 0
    return run_dir
