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

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cli import stage_main
from pipeline.config import EvaluateConfig, PipelineConfig

log = logging.getLogger(__name__)

INPUTS = ("prepare", "finetune")


def fingerprint_config(config: PipelineConfig) -> dict[str, Any]:
    return {"evaluate": config.evaluate, "eval_batch_size": config.finetune.eval_batch_size}


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix."""
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class, f1s = {}, []
    for i, name in enumerate(labels):
        tp = confusion[i, i]
        predicted, actual = confusion[:, i].sum(), confusion[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[name] = {"precision": round(float(precision), 6),
                           "recall": round(float(recall), 6), "f1": round(float(f1), 6),
                           "support": int(actual)}
    return {"examples": int(len(y_true)),
            "accuracy": round(float(np.trace(confusion) / max(len(y_true), 1)), 6),
            "macro_f1": round(float(np.mean(f1s)), 6), "per_class": per_class,
            "confusion_matrix": confusion.tolist()}


def bless(metrics: dict[str, Any], cfg: EvaluateConfig) -> dict[str, Any]:
    checks = {"accuracy": {"value": metrics["accuracy"], "min": cfg.min_accuracy},
              "macro_f1": {"value": metrics["macro_f1"], "min": cfg.min_macro_f1}}
    for check in checks.values():
        check["passed"] = check["value"] >= check["min"]
    return {"blessed": all(c["passed"] for c in checks.values()), "checks": checks}


def predict_keras(model, prep_dir: Path, split: str, batch_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities of a Keras classifier on one prepared split."""
    import tensorflow as tf

    from data.input import batch_examples, read_split

    @tf.function(reduce_retracing=True)
    def probabilities(features):
        return tf.nn.softmax(model(features, training=False), axis=-1)

    labels, probs = [], []
    for features, y in batch_examples(read_split(prep_dir, split, with_text=False),
                                      batch_size):
        probs.append(probabilities(features).numpy())
        labels.append(y.numpy())
    return np.concatenate(labels), np.concatenate(probs)


def evaluate_model(model, meta: dict, prep_dir: Path, config: PipelineConfig,
                   out_dir: Path | None = None) -> dict[str, Any]:
    """Metrics on `evaluate.split` and validation, and the blessing, for a Keras model.

    With `out_dir`, writes metrics.json, blessing.json and predictions.npz there. Every
    stage that makes a Keras model reports it through here, so metrics compare directly.
    """
    names = meta["labels"]
    split = config.evaluate.split
    results: dict[str, Any] = {}
    for name in dict.fromkeys([split, "validation"]):
        y, probs = predict_keras(model, prep_dir, name, config.finetune.eval_batch_size)
        results[name] = classification_metrics(y, probs.argmax(-1), names)
        if out_dir is not None and name == split:
            np.savez_compressed(out_dir / "predictions.npz", labels=y, probabilities=probs)
        log.info("%s: accuracy %.4f, macro-F1 %.4f on %d examples", name,
                 results[name]["accuracy"], results[name]["macro_f1"], results[name]["examples"])
    blessing = bless(results[split], config.evaluate)
    log.info("blessed: %s", blessing["blessed"])
    if out_dir is not None:
        (out_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        (out_dir / "blessing.json").write_text(json.dumps(blessing, indent=2) + "\n")
    return {"split": split, **results[split], "validation": results["validation"],
            "blessing": blessing}


def run(config: PipelineConfig, inputs: dict[str, Path], out_dir: Path,
        work_dir: Path) -> dict[str, Any]:
    from models.artifact import load_model

    model, meta = load_model(inputs["finetune"])
    return evaluate_model(model, meta, inputs["prepare"], config, out_dir)


if __name__ == "__main__":
    stage_main("evaluate")
