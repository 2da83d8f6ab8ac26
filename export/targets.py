"""The names of the deliverables: one vocabulary for the quantize stage's TFLite files,
the export targets, the report and the server's backends.

A TFLite *variant* is how a classifier is converted (`export.tflite.to_tflite`); the
quantize stage writes `quantize/<source>/<variant>.tflite` for each source model
(`finetune`, `prune`). An export *target* is a deliverable: a SavedModel
(`SAVEDMODEL_TARGETS`), `text`, or a TFLite variant of a source model. `cpu`, `gpu` and
`int8` are the variant of the model chosen by `export.model`; `qat` is the float model's
QAT variant and `pruned-qat` the pruned model's. The `student-*` targets are the variants
of the distilled student (`distill`), whatever `export.model` is.
"""

from __future__ import annotations

import json
from pathlib import Path

TFLITE_VARIANTS = {
    "float32": "float32 weights and activations (the reference)",
    "cpu": "dynamic-range int8: int8 weights, float activations",
    "gpu": "float16 weights, float activations",
    "int8": "int8 matmuls from post-training calibration on training examples",
    "qat": "int8 from quantization-aware training",
}
POST_TRAINING_VARIANTS = ("float32", "cpu", "gpu", "int8")  # converted without training
INT8_ACTIVATION_VARIANTS = ("int8", "qat")

SAVEDMODEL_TARGETS = {
    "savedmodel": "TF Serving SavedModel: raw strings in (tokenizer as TF Text ops), and "
                  "token ids",
    "savedmodel-ids": "TF Serving SavedModel of core TensorFlow ops only: token ids in "
                      "(clients tokenize with the vocab.txt in its assets)",
}
EXPORT_TARGETS = ("savedmodel", "savedmodel-ids", "cpu", "gpu", "int8", "qat",
                  "pruned-qat", "student-cpu", "student-gpu", "student-int8", "student-qat",
                  "text")
QAT_TARGETS = {"qat": "finetune", "pruned-qat": "prune",
               "student-qat": "distill"}  # target -> source model
STUDENT_TARGETS = {"student-cpu": "cpu", "student-gpu": "gpu",
                   "student-int8": "int8"}  # post-training variants of the student

# The quantize stage's names before the two vocabularies were merged: configs that still
# use them get an error naming the new one.
RENAMED_VARIANTS = {"dynamic_int8": "cpu", "float16": "gpu", "full_int8": "int8",
                    "qat_int8": "qat"}


def tflite_source(target: str, export_model: str) -> tuple[str, str] | None:
    """The (source model, variant) a TFLite export target is made of, or None for the
    targets that are not a token-id TFLite variant (the SavedModels, `text`)."""
    if target in QAT_TARGETS:
        return QAT_TARGETS[target], "qat"
    if target in STUDENT_TARGETS:
        return "distill", STUDENT_TARGETS[target]
    if target in POST_TRAINING_VARIANTS:
        return export_model, target
    return None


def exported_file(export_dir: Path, target: str) -> Path | None:
    """The file (or folder) of export target `target` in an export stage's output, as
    its verification.json lists it; None if the stage did not export it. (A file-name
    pattern cannot tell `<name>-qat.tflite` from `<name>-pruned-qat.tflite`.)"""
    try:
        targets = json.loads((Path(export_dir) / "verification.json").read_text())["targets"]
    except (OSError, ValueError, KeyError):
        return None
    entry = targets.get(target)
    return Path(export_dir) / entry["path"] if entry else None
