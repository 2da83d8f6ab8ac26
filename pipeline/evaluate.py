"""Evaluate: accuracy, macro-F1, per-class precision/recall and confusion matrix; blessing.

Runs the fine-tuned Keras model on `evaluate.split` (test by default) and the validation
split. The model is blessed when it meets `evaluate.min_accuracy` and
`evaluate.min_macro_f1`; export refuses an unblessed model unless forced.

    <run-dir>/evaluate/
        metrics.json       {split: metrics} with accuracy, macro_f1, per_class
                           {precision, recall, f1, support}, confusion_matrix (rows: true
                           label, columns: predicted), in labels.txt order
        predictions.npz    labels and predicted probabilities of the evaluated split
        blessing.json      {"blessed": bool, "checks": {...}}
        config.yaml, manifest.json
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.cli import stage_main
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

INPUTS = ("prepare", "finetune")


def fingerprint_config(config: PipelineConfig) -> dict[str, Any]:
    return {"evaluate": config.evaluate, "eval_batch_size": config.finetune.eval_batch_size}


def run(config: PipelineConfig, inputs: dict[str, Path], out_dir: Path,
        work_dir: Path) -> dict[str, Any]:
    from models.artifact import load_model
    from models.evaluation import evaluate_model

    model, meta = load_model(inputs["finetune"])
    return evaluate_model(model, meta["labels"], inputs["prepare"],
                          split=config.evaluate.split,
                          batch_size=config.finetune.eval_batch_size,
                          min_accuracy=config.evaluate.min_accuracy,
                          min_macro_f1=config.evaluate.min_macro_f1, out_dir=out_dir)


if __name__ == "__main__":
    stage_main("evaluate")
