"""Classification metrics, Keras predictions on prepared splits, and the blessing.

Every stage that makes a model (a Keras classifier or a converted one) scores it with
`classification_metrics`, and every stage that makes a Keras classifier reports it
through `evaluate_model`, so that the figures of all stages compare directly.

Example:
    >>> labels, probabilities = predict_keras(model, prep_dir, "test", batch_size=128)
    >>> classification_metrics(labels, probabilities.argmax(-1), ["neg", "pos"])["accuracy"]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.timing import phase

log = logging.getLogger(__name__)


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


def bless(metrics: dict[str, Any], *, min_accuracy: float = 0.0,
          min_macro_f1: float = 0.0) -> dict[str, Any]:
    """Whether `metrics` meet both thresholds, with each check's value, minimum and
    outcome: `{"blessed": bool, "checks": {"accuracy": {...}, "macro_f1": {...}}}`."""
    checks = {"accuracy": {"value": metrics["accuracy"], "min": min_accuracy},
              "macro_f1": {"value": metrics["macro_f1"], "min": min_macro_f1}}
    for check in checks.values():
        check["passed"] = check["value"] >= check["min"]
    return {"blessed": all(c["passed"] for c in checks.values()), "checks": checks}


@phase("evaluate")
def predict_keras(model, prep_dir: Path, split: str, batch_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities of a Keras classifier on one prepared split."""
    import tensorflow as tf

    from data.input import batch_examples, length_sorted, read_split

    @tf.function(reduce_retracing=True)
    def probabilities(features):
        return tf.nn.softmax(model(features, training=False), axis=-1)

    # Sorted by length, so each batch is padded to about its own length; the outputs
    # go back to file order.
    examples, order = length_sorted(read_split(prep_dir, split, with_text=False))
    labels, probs = [], []
    for features, y in batch_examples(examples, batch_size):
        probs.append(probabilities(features).numpy())
        labels.append(y.numpy())
    restore = np.argsort(order)
    return np.concatenate(labels)[restore], np.concatenate(probs)[restore]


@phase("evaluate")
def evaluate_model(model, labels: list[str], prep_dir: Path, *, split: str,
                   batch_size: int, min_accuracy: float = 0.0, min_macro_f1: float = 0.0,
                   out_dir: Path | None = None) -> dict[str, Any]:
    """Metrics on `split` and on validation, and the blessing of the `split` metrics,
    for a Keras classifier whose classes are `labels`.

    With `out_dir`, writes metrics.json ({split: metrics}), blessing.json and
    predictions.npz (labels and probabilities on `split`) there.
    """
    results: dict[str, Any] = {}
    for name in dict.fromkeys([split, "validation"]):
        y, probs = predict_keras(model, prep_dir, name, batch_size)
        results[name] = classification_metrics(y, probs.argmax(-1), labels)
        if out_dir is not None and name == split:
            np.savez_compressed(out_dir / "predictions.npz", labels=y, probabilities=probs)
        log.info("%s: accuracy %.4f, macro-F1 %.4f on %d examples", name,
                 results[name]["accuracy"], results[name]["macro_f1"], results[name]["examples"])
    blessing = bless(results[split], min_accuracy=min_accuracy, min_macro_f1=min_macro_f1)
    log.info("blessed: %s", blessing["blessed"])
    if out_dir is not None:
        (out_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        (out_dir / "blessing.json").write_text(json.dumps(blessing, indent=2) + "\n")
    return {"split": split, **results[split], "validation": results["validation"],
            "blessing": blessing}


__all__ = ["bless", "classification_metrics", "evaluate_model", "predict_keras"]
