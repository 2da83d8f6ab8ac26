"""The Python API: the README's example runs as written, and a stage call from Python
writes the same artifact the CLI writes."""

import re

import numpy as np
import pytest

from core.errors import SlimbertError
from tests.helpers import REPO, TINY


def readme_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section holds one example"
    return blocks[0]


def test_readme_example_runs(tmp_path, monkeypatch):
    code = readme_example()
    assert '"runs/notebook"' in code and '"configs/tiny.yaml"' in code
    monkeypatch.chdir(REPO)
    code = code.replace('"runs/notebook"', repr(str(tmp_path / "notebook")))
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)  # noqa: S102

    folders = namespace["folders"]
    assert sorted(folders) == ["evaluate", "finetune", "prepare"]
    assert all((folder / "manifest.json").is_file() for folder in folders.values())
    # The checkpoint's weights were ported into the fresh classifier.
    assert namespace["report"]
    # The TFLite model predicts what the Keras model predicts on the two texts.
    tflite, keras = namespace["tflite_probabilities"], namespace["probabilities"]
    assert tflite.shape == keras.shape == (2, 2)
    np.testing.assert_allclose(tflite, keras, atol=0.01)  # dynamic-range int8 weights
    # The tfmot copies are wrapped.
    layers = [type(layer).__name__ for layer in namespace["prunable"].layers]
    assert "PruneLowMagnitude" in layers
    assert any(type(layer).__name__.startswith("QuantizeWrapper")
               for layer in namespace["qat_model"].layers)


def test_run_stage_matches_the_cli(tmp_path):
    from pipeline.api import load_config, read_manifest, run_stage
    from tests.helpers import manifest
    from tests.helpers import run_stage as cli_stage

    config = load_config(TINY)
    folder = run_stage("prepare", config, tmp_path / "api")
    assert cli_stage("prepare", tmp_path / "cli") == 0
    ours, theirs = read_manifest(folder), manifest(tmp_path / "cli", "prepare")
    assert ours["fingerprint"] == theirs["fingerprint"]
    assert {k: v["sha256"] for k, v in ours["files"].items() if k.endswith(".tfrecord")} == \
        {k: v["sha256"] for k, v in theirs["files"].items() if k.endswith(".tfrecord")}


def test_errors_are_raised_not_printed(tmp_path):
    from pipeline.api import load_config, run_stage

    with pytest.raises(SlimbertError, match="needs the 'prepare' artifact"):
        run_stage("finetune", load_config(TINY), tmp_path)
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        run_stage("train", load_config(TINY), tmp_path)
