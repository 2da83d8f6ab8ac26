"""A model inside an artifact folder: `model.keras` plus `model.json` describing it.

Every stage that produces a Keras model (finetune, prune, quantize) writes it this way,
with the label names and tokenizer files beside it, so that any later stage can load it
without knowing which stage made it.

Example:
    >>> model, meta = load_model("runs/default/finetune")
    >>> meta["labels"]
    ['rotten', 'fresh']
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import tf_keras as keras

import models.bert  # noqa: F401  (registers the custom layers for loading)
import models.optimization  # noqa: F401
from core.errors import ArtifactError
from core.timing import phase
from data.tokenizer import TOKENIZER_FILE, VOCAB_FILE

MODEL_FILE = "model.keras"
META_FILE = "model.json"
# The labels and the tokenizer artifact (data.tokenizer) travel with every model.
TOKENIZER_FILES = ("labels.txt", VOCAB_FILE, TOKENIZER_FILE)


@phase("io")
def save_model(model: keras.Model, out_dir: Path, meta: dict[str, Any],
               tokenizer_from: Path) -> None:
    """Write the model (without optimizer state), its description and tokenizer files."""
    model.save(out_dir / MODEL_FILE)  # the model is never compiled: no optimizer inside
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for name in TOKENIZER_FILES:
        shutil.copyfile(Path(tokenizer_from) / name, out_dir / name)


@phase("io")
def load_model(artifact_dir: Path, custom_objects: dict | None = None
               ) -> tuple[keras.Model, dict[str, Any]]:
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MODEL_FILE
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} holds no {MODEL_FILE}")
    try:
        model = keras.models.load_model(path, custom_objects=custom_objects, compile=False)
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path} cannot be loaded: {err}") from None
    return model, read_meta(artifact_dir)


def read_meta(artifact_dir: Path) -> dict[str, Any]:
    meta = json.loads((Path(artifact_dir) / META_FILE).read_text(encoding="utf-8"))
    meta["labels"] = read_labels(artifact_dir)
    return meta


def read_labels(artifact_dir: Path) -> list[str]:
    return (Path(artifact_dir) / "labels.txt").read_text(encoding="utf-8").splitlines()
