"""The model `slimbert serve` serves: one target of an export directory.

`open_target` reads what `slimbert export` wrote (`verification.json`, `manifest.json`)
and refuses a target that is missing or failed the export gate (unless forced), without
loading anything. `ServedModel.load` then loads it with `export.predictor.Predictor` and
gives every backend the SavedModel's interface: the `serving_default` signature (raw
texts) and, except for the raw-string `text` TFLite model, `token_ids`; both return
`probabilities`, `label`, `label_id` and `classes`. The core-ops SavedModel
(`savedmodel-ids`) has `token_ids` only: its clients tokenize, as with TF Serving.

Example:
    >>> model = ServedModel.load(Path("runs/default/export"), "cpu")
    >>> model.run("serving_default", ["a fine film"]).round(2)
    array([[0.07, 0.93]], dtype=float32)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ArtifactError, SlimbertError
from data.features import INPUT_NAMES
from data.tokenizer import read_tokenizer_config
from export.predictor import Predictor
from export.targets import EXPORT_TARGETS

TEXT_SIGNATURE = "serving_default"  # as in export.savedmodel (which needs TensorFlow)
IDS_SIGNATURE = "token_ids"
PREDICT_METHOD = "tensorflow/serving/predict"

# One token-id instance: input_ids, input_mask, segment_ids (equal lengths).
TokenIds = tuple[list[int], list[int], list[int]]


@dataclass(frozen=True)
class ExportTarget:
    """One target of an export directory, as `slimbert export` recorded it.

    Attributes:
        name, version: the model's name and version (`export.name`, `export.version`).
        target: `savedmodel`, `savedmodel-ids` or a TFLite target (`cpu`, `gpu`, ...,
            `text`).
        path: the SavedModel version folder or the .tflite file.
        passed: whether it passed the export gate.
        max_seq_length: the tokenizer's sequence length (from its `tokenizer.json`).
        vocab_size: number of WordPiece ids (valid `input_ids` are below it).
    """

    name: str
    version: int
    target: str
    path: Path
    passed: bool
    max_seq_length: int
    vocab_size: int


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        hint = f"; did you mean {path.parent / 'export'}?" if \
            (path.parent / "export" / path.name).is_file() else "; run `slimbert export` first"
        raise SlimbertError(f"{path.parent} is not an export folder: it has no {path.name} "
                            f"({what}){hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise SlimbertError(f"{path}: unreadable ({err})") from None


def open_target(export_dir: Path, target: str, force: bool = False) -> ExportTarget:
    """The exported `target` of `export_dir` (`<run-dir>/export`), checked against the gate.

    Raises SlimbertError (saying what to do) if the folder is not an export, the target was
    not exported, or it failed verification and `force` is False.
    """
    export_dir = Path(export_dir)
    if target not in EXPORT_TARGETS:
        raise SlimbertError(f"unknown backend {target!r}; expected one of "
                            f"{', '.join(EXPORT_TARGETS)}")
    if not export_dir.is_dir():
        raise SlimbertError(f"{export_dir} does not exist; give the export folder of a run "
                            "(e.g. runs/default/export, written by `slimbert export`)")
    verification = _read_json(export_dir / "verification.json", "the export gate's results")
    config = _read_json(export_dir / "manifest.json", "the export's manifest")["config"]
    results = verification["targets"]
    if target not in results:
        raise SlimbertError(f"{export_dir} has no {target!r} export (exported: "
                            f"{', '.join(results)}); add it to export.targets and rerun "
                            "`slimbert export`, or pick another --backend")
    result = results[target]
    if not result["passed"] and not force:
        raise SlimbertError(
            f"the {target!r} export in {export_dir} failed the export gate (accuracy "
            f"{result['accuracy']:.4f} vs {result['source_accuracy']:.4f}, agreement "
            f"{result['agreement']:.4f}); serve a target that passed, or pass --force")
    path = (export_dir / result["path"]).resolve()
    if not path.is_relative_to(export_dir.resolve()) or not path.exists():
        raise SlimbertError(f"{export_dir}: the {target!r} export {result['path']!r} is "
                            "missing; rerun `slimbert export`")
    tokenizer_dir = path / "assets" if path.is_dir() else path.parent
    try:
        tokenizer = read_tokenizer_config(tokenizer_dir)
    except ArtifactError as err:
        raise SlimbertError(f"{err}; rerun `slimbert export`") from None
    return ExportTarget(name=config["export"]["name"], version=int(config["export"]["version"]),
                        target=target, path=path, passed=bool(result["passed"]),
                        max_seq_length=int(tokenizer["max_seq_length"]),
                        vocab_size=int(tokenizer["vocab_size"]))


def _tensor(dtype: str, *dims: int) -> dict[str, Any]:
    """A TensorInfo as TF Serving's metadata shows it (-1: any size)."""
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""}
                                                     for d in dims], "unknown_rank": False}}


class ServedModel:
    """An exported target, loaded, behind the SavedModel's two signatures.

    Args:
        target: from `open_target`.
        predictor: the loaded model.

    Attributes:
        signatures: the signature names this backend serves.
        labels: class names, in the order of the probabilities.
        vocab_size: number of WordPiece ids (valid `input_ids` are below it).
    """

    def __init__(self, target: ExportTarget, predictor: Predictor) -> None:
        self.target = target
        self.predictor = predictor
        self.labels = predictor.labels
        self.signatures = {"tflite-text": (TEXT_SIGNATURE,),
                           "savedmodel-ids": (IDS_SIGNATURE,)}.get(
            predictor.format, (TEXT_SIGNATURE, IDS_SIGNATURE))
        self.vocab_size = target.vocab_size

    @classmethod
    def load(cls, export_dir: Path, target: str, force: bool = False,
             num_threads: int | None = None) -> ServedModel:
        """`open_target`, then load the model (TFLite: with `num_threads` threads)."""
        found = open_target(export_dir, target, force)
        return cls(found, Predictor(found.path, num_threads=num_threads))

    def run(self, signature: str, instances: Sequence[str] | Sequence[TokenIds],
            batch_size: int = 64) -> np.ndarray:
        """Probabilities float32 [N, C] for texts (`serving_default`) or token ids
        (`token_ids`, each instance padded with 0 to the longest)."""
        if signature == TEXT_SIGNATURE:
            return self.predictor.predict_texts(list(instances), batch_size=batch_size)
        width = max(len(ids) for ids, _, _ in instances)
        arrays = {name: np.zeros((len(instances), width), np.int32) for name in INPUT_NAMES}
        for i, row in enumerate(instances):
            for name, values in zip(INPUT_NAMES, row):
                arrays[name][i, :len(values)] = values
        return self.predictor.predict_ids(arrays)

    def warm_up(self) -> None:
        """Run each signature once, so the first request does not pay for tracing."""
        if TEXT_SIGNATURE in self.signatures:
            self.run(TEXT_SIGNATURE, ["warm up"])
        if IDS_SIGNATURE in self.signatures:
            self.run(IDS_SIGNATURE, [([0], [1], [0])])

    def signature_defs(self) -> dict[str, Any]:
        """The signatures as TF Serving's metadata API describes the SavedModel's."""
        classes = len(self.labels)
        outputs = {"probabilities": _tensor("DT_FLOAT", -1, classes),
                   "classes": _tensor("DT_STRING", -1, classes),
                   "label": _tensor("DT_STRING", -1), "label_id": _tensor("DT_INT32", -1)}
        inputs = {TEXT_SIGNATURE: {"text": _tensor("DT_STRING", -1)},
                  IDS_SIGNATURE: {name: _tensor("DT_INT32", -1, -1) for name in INPUT_NAMES}}
        return {name: {"inputs": inputs[name], "outputs": outputs, "method_name": PREDICT_METHOD}
                for name in self.signatures}


__all__ = ["ExportTarget", "IDS_SIGNATURE", "ServedModel", "TEXT_SIGNATURE", "TokenIds",
           "open_target"]
