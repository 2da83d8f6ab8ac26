"""Quantize: QAT int8 and post-training TFLite variants of the float and pruned models.

For every source in `quantize.sources` (`finetune`: the float model, `prune`: the sparse
one) it converts the `quantize.post_training` variants (float32, dynamic-range int8,
float16, and `int8`: the quantized graph QAT would train, its ranges calibrated on
`quantize.calibration_batches` training batches and never trained, converted like the
QAT model) and, with `quantize.qat`, runs quantization-aware training with tfmot
(prune-preserving for the pruned source: every pruned zero survives) under the
`quantize.train` settings (same keys and resume behaviour as `finetune`; with
`quantize.train.distill_weight`, distilling from the fine-tuned model) and converts
the result to an int8 TFLite model. Every TFLite model is run in ai-edge-litert on the
test split; its accuracy, agreement with its Keras source, size and op census (op type x
tensor dtypes; encoder matmuls in int8 or float) go into the manifest.

    <run-dir>/quantize/
        <source>/<variant>.tflite  e.g. finetune/qat.tflite, prune/int8.tflite (the
                                   export target names: float32, cpu, gpu, int8, qat)
        <source>/qat_history.json  the QAT fine-tune, per epoch
        <source>/qat_predictions.npz  the QAT Keras (fake-quant) model's test-split
                                   labels and probabilities (export compares with them)
        <source>/int8_predictions.npz  the same for the calibrated int8 Keras model
        <source>/source_predictions.npz  the same for the source model itself
        <source>/<variant>_tflite_predictions.npz  the TFLite model's test-split labels
                                   and probabilities, with the runtime and the file's
                                   sha256 (`info`): export's gate takes them for the
                                   files it copies instead of running them again
        labels.txt, vocab.txt, tokenizer.json
        variants.json              per variant: file, bytes, gzip bytes, test metrics,
                                   agreement with the source, op census, sparsity
        config.yaml, manifest.json
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cli import stage_main
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

SOURCE_LABELS = {"finetune": "float", "prune": "pruned", "distill": "student"}


def input_names(config: PipelineConfig) -> tuple[str, ...]:
    teacher = ("finetune",) if config.quantize.qat and \
        config.quantize.train.distills else ()
    return tuple(dict.fromkeys(("prepare", *config.quantize.sources, *teacher)))


def fingerprint_config(config: PipelineConfig) -> dict[str, Any]:
    return {"seed": config.seed, "quantize": config.quantize,
            "split": config.evaluate.split,
            "eval_batch_size": config.finetune.eval_batch_size}


def _pruned_sparsity(kernels: dict[str, np.ndarray], pruned: list[str]
                     ) -> dict[str, dict[str, Any]]:
    """`zero_counts` of the kernels (name -> array) that belong to the pruned layers."""
    from models.pruning import zero_counts

    return {name: zero_counts(value) for name, value in kernels.items()
            if name.split("/")[0] in pruned}


def _evaluate_tflite(flat: bytes, batches: list, y_true: np.ndarray, labels: list[str],
                     reference: np.ndarray, desc: str, twin: np.ndarray | None = None
                     ) -> tuple[dict[str, Any], np.ndarray, str]:
    """Test metrics of a TFLite model run in ai-edge-litert on `batches` (labels
    `y_true`), and its agreement with the Keras model it came from (`reference`: that
    model's predicted classes) and with its quantized Keras twin (`twin`); returns
    (metrics, probabilities, runtime)."""
    from core.progress import progress
    from export.runtime import run_tflite
    from models.evaluation import classification_metrics

    bar = progress(total=len(y_true), desc=desc, unit="ex")
    try:
        # All cores: 1.6x faster than the runtime's default of one on 2 cores, the same
        # outputs to the bit (XNNPACK splits rows and channels, not the sums).
        outputs, runtime = run_tflite(flat, batches, num_threads=os.cpu_count(),
                                      on_example=bar.update, with_runtime=True)
    finally:
        bar.close()

    predicted = outputs.argmax(-1)
    metrics = classification_metrics(y_true, predicted, labels)
    metrics["agreement_with_source"] = round(float(np.mean(predicted == reference)), 6)
    if twin is not None:
        metrics["agreement_with_twin"] = round(float(np.mean(predicted == twin)), 6)
    return metrics, outputs, runtime


def _quantized_copy(config: PipelineConfig, model, prep_dir: Path, preserve_sparsity: bool):
    """The source model wrapped for int8, its activation ranges calibrated on
    `quantize.calibration_batches` training batches: QAT's starting point, and untrained
    the `int8` variant."""
    from models.quantization import calibrated_copy

    cfg = config.quantize
    return calibrated_copy(model, prep_dir, calibration_batches=cfg.calibration_batches,
                           batch_size=cfg.train.batch_size, seed=config.seed + 1,
                           preserve_sparsity=preserve_sparsity, per_channel=cfg.per_channel,
                           split_outliers=cfg.outlier_ratio)


def _save_predictions(path: Path, labels: np.ndarray, probabilities: np.ndarray,
                      info: dict[str, Any] | None = None) -> None:
    extra = {} if info is None else {"info": np.array(json.dumps(info))}
    np.savez_compressed(path, labels=labels, probabilities=probabilities, **extra)


def _qat(config: PipelineConfig, source: str, source_dir: Path, prep_dir: Path,
         work_dir: Path, preserve_sparsity: bool, pruned: list[str],
         teacher_dir: Path | None, start=None, teacher_logits=None):
    """QAT-train a copy of the source model; returns (qat model, training report).

    `start`: the calibrated copy `_quantized_copy` made for the `int8` variant (done
    with it), trained in place instead of calibrating the same copy again; only on the
    default strategy, whose variables need no particular scope. `teacher_logits`: the
    `models.training.TeacherLogits` every source's QAT shares (one teacher, the same
    batches), so the teacher runs in the first QAT only."""
    from models import quantization as quant
    from models.artifact import load_model, read_meta
    from models.bert import BertArchitecture
    from models.pruning import sparsity_summary
    from models.training import Trainer

    cfg = config.quantize
    meta = read_meta(source_dir)
    report: dict[str, Any] = {}

    reuse = start is not None and cfg.train.strategy == "default"

    def build_model(total_steps: int):
        qat_model = start if reuse else _quantized_copy(
            config, load_model(source_dir)[0], prep_dir, preserve_sparsity)
        report["outlier_channels"] = quant.split_channels(qat_model)
        if preserve_sparsity:
            report["sparsity_before"] = sparsity_summary(_pruned_sparsity(
                quant.effective_kernels(qat_model), pruned))
        return qat_model, {"source": str(source_dir), "preserve_sparsity": preserve_sparsity}

    trainer = Trainer(cfg.train, seed=config.seed, prep_dir=prep_dir, work_dir=work_dir,
                      arch=BertArchitecture(**meta["architecture"]), build_model=build_model,
                      build_teacher=(lambda: load_model(teacher_dir)[0])
                      if cfg.train.distills else None,
                      name=f"qat {source}", teacher_logits=teacher_logits)
    replayed = teacher_logits.replayed if teacher_logits is not None else 0
    training = trainer.fit()
    if teacher_logits is not None:  # steps that reused an earlier QAT's teacher logits
        report["teacher_steps_replayed"] = teacher_logits.replayed - replayed
    quant.refresh_weight_ranges(trainer.model)
    if preserve_sparsity:
        report["sparsity_after"] = sparsity_summary(_pruned_sparsity(
            quant.effective_kernels(trainer.model), pruned))
    return trainer.model, {**report, "training": training}


def run(config: PipelineConfig, inputs: dict[str, Path], out_dir: Path,
        work_dir: Path) -> dict[str, Any]:
    from core.files import data_size
    from data.input import batch_examples, read_split, representative_examples
    from data.tokenizer import read_tokenizer_config
    from export.flatbuffer import census_summary, matmul_weight_sparsity, op_census
    from export.targets import INT8_ACTIVATION_VARIANTS
    from export.tflite import to_tflite
    from models.artifact import TOKENIZER_FILES, load_model
    from models.evaluation import predict_keras
    from models.pruning import sparsity_summary
    from models.training import TeacherLogits

    cfg = config.quantize
    prep_dir = inputs["prepare"]
    split = config.evaluate.split
    batch_size = config.finetune.eval_batch_size
    first = inputs[cfg.sources[0]]
    for name in TOKENIZER_FILES:
        shutil.copyfile(first / name, out_dir / name)
    max_seq_length = read_tokenizer_config(first)["max_seq_length"]
    representative_rows = representative_examples(prep_dir, cfg.representative_examples,
                                                  max_seq_length, config.seed)
    log.info("representative dataset: %d training examples", len(representative_rows))

    def representative():
        return iter(representative_rows)

    test_batches = list(batch_examples(read_split(prep_dir, split, with_text=False),
                                       batch_size))
    y_test = np.concatenate([y.numpy() for _, y in test_batches])

    variants: dict[str, dict[str, Any]] = {}
    qat_reports: dict[str, Any] = {}
    teacher_logits = TeacherLogits()
    for source in cfg.sources:
        source_dir = inputs[source]
        model, meta = load_model(source_dir)
        labels = meta["labels"]
        pruned = list(meta.get("pruned_layers", []))
        y_true, probabilities = predict_keras(model, prep_dir, split, batch_size)
        reference = probabilities.argmax(-1)
        (out_dir / source).mkdir()
        _save_predictions(out_dir / source / "source_predictions.npz", y_true, probabilities)
        jobs = [(variant, model) for variant in cfg.post_training if variant != "int8"]
        twins: dict[str, np.ndarray] = {}  # variant -> its quantized Keras model's labels
        int8_model = None
        if "int8" in cfg.post_training or cfg.qat:
            int8_model = _quantized_copy(config, model, prep_dir, bool(pruned))
        if "int8" in cfg.post_training:
            _, int8_probs = predict_keras(int8_model, prep_dir, split, batch_size)
            _save_predictions(out_dir / source / "int8_predictions.npz", y_true, int8_probs)
            twins["int8"] = int8_probs.argmax(-1)
            jobs.append(("int8", int8_model))

        # The post-training variants first: QAT then trains the int8 variant's
        # calibrated copy in place rather than calibrating the same copy again.
        for variant, keras_model in [*jobs, *([("qat", None)] if cfg.qat else [])]:
            if variant == "qat":
                keras_model, report = _qat(config, source, source_dir, prep_dir,
                                           work_dir / source, bool(pruned), pruned,
                                           inputs.get("finetune"), start=int8_model,
                                           teacher_logits=teacher_logits)
                (out_dir / source / "qat_history.json").write_text(
                    json.dumps(report["training"]["history"], indent=2) + "\n")
                y_true, qat_probs = predict_keras(keras_model, prep_dir, split, batch_size)
                _save_predictions(out_dir / source / "qat_predictions.npz", y_true,
                                  qat_probs)
                twins["qat"] = qat_probs.argmax(-1)
                report["keras_fake_quant_accuracy"] = round(float(np.mean(
                    qat_probs.argmax(-1) == y_true)), 6)
                qat_reports[source] = report
            name = f"{source}/{variant}"
            log.info("%s: converting", name)
            flat = to_tflite(keras_model, variant, max_seq_length=max_seq_length,
                             representative=representative
                             if variant in INT8_ACTIVATION_VARIANTS else None)
            path = out_dir / source / f"{variant}.tflite"
            path.write_bytes(flat)
            census = op_census(flat)
            metrics, outputs, runtime = _evaluate_tflite(
                flat, test_batches, y_test, labels, reference, desc=name,
                twin=twins.get(variant))
            _save_predictions(out_dir / source / f"{variant}_tflite_predictions.npz",
                              y_test, outputs,
                              {"runtime": runtime, "kernels": "default", "labels": labels,
                               "sha256": hashlib.sha256(flat).hexdigest(), "split": split})
            weights = matmul_weight_sparsity(flat)
            entry = {
                "source": source, "variant": variant,
                "description": f"{SOURCE_LABELS[source]} {variant}"
                               + (" (prune-preserving QAT)" if pruned and variant == "qat"
                                  else ""),
                "file": str(path.relative_to(out_dir)), **data_size(flat),
                "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                "agreement_with_source": metrics["agreement_with_source"],
                **({"twin_accuracy": round(float(np.mean(twins[variant] == y_test)), 6),
                    "agreement_with_twin": metrics["agreement_with_twin"]}
                   if variant in twins else {}),
                "metrics": metrics, "census": census_summary(census),
                "ops": census["ops"]}
            if pruned:
                entry["sparsity"] = sparsity_summary(
                    {k: v for k, v in weights.items() if any(p in k for p in pruned)})
            variants[name] = entry
            log.info("%s: accuracy %.4f (agreement %.4f), %.2f MB, matmuls int8 %d / "
                     "hybrid %d / float %d", name, metrics["accuracy"],
                     metrics["agreement_with_source"], len(flat) / 1e6,
                     census["int8_matmuls"], census["hybrid_matmuls"],
                     census["float_matmuls"])
        del model
    (out_dir / "variants.json").write_text(json.dumps(variants, indent=2) + "\n")
    summary = {name: {key: v[key] for key in ("accuracy", "macro_f1", "agreement_with_source",
                                              "twin_accuracy", "agreement_with_twin",
                                              "bytes", "gzip_bytes") if key in v}
               | {"int8_matmuls": v["census"]["int8_matmuls"],
                  "float_matmuls": v["census"]["float_matmuls"],
                  "hybrid_matmuls": v["census"]["hybrid_matmuls"]}
               for name, v in variants.items()}
    return {"split": split, "variants": summary, "qat": qat_reports,
            "representative_examples": len(representative_rows)}


if __name__ == "__main__":
    stage_main("quantize")
