"""Export: verified SavedModel and TFLite deliverables for servers, CPUs and edge devices.

Writes every target in `export.targets`, then runs each one in a fresh Python process with
the runtime a user would use (`tf.saved_model.load`; the TFLite adapter, ai-edge-litert
first) on the test split. An export counts only if its accuracy is within
`export.max_accuracy_drop` of the model it came from and it agrees with that model's
predictions on at least `export.min_agreement` of the examples; otherwise the stage fails
and leaves nothing behind, unless `--force` (then the failures are recorded). The model
must be blessed by evaluation (or `--force`). The targets in `export.compare_kernels`
(the int8 ones by default) also run on the runtime's builtin kernels instead of XNNPACK;
accuracy and agreement there are recorded, not gated (int8 kernels round differently).

    <run-dir>/export/
        saved_model/<name>/<version>/   saved_model.pb, variables/, assets/ (vocab.txt,
                                        labels.txt), assets.extra/tf_serving_warmup_requests
        tflite/<name>-cpu.tflite        dynamic-range int8 (CPU)
        tflite/<name>-gpu.tflite        float16 weights, builtin ops (GPU delegate)
        tflite/<name>-int8.tflite       full integer: int8 weights, activations, logits
        tflite/<name>-qat.tflite        QAT int8 of the float model (quantize stage)
        tflite/<name>-pruned-qat.tflite prune-preserving QAT int8 of the pruned model
        tflite/<name>-text.tflite       raw string in: tokenizer (TF Text ops) + `cpu` model
        tflite/labels.txt, vocab.txt, tokenizer.json   travel with the TFLite models
        verification.json               per target: accuracy, agreement, runtime, gate;
                                        (export.compare_kernels: on builtin kernels too)
        config.yaml, manifest.json

Token-id TFLite models take `input_ids`, `input_mask`, `segment_ids` (int32 [1,
max_seq_length], from the tokenizer described by tokenizer.json) and return logits (int8
with its scale for `int8`). Loading the SavedModel needs `import tensorflow_text`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from export.targets import tflite_source
from pipeline.cli import stage_main
from pipeline.config import PipelineConfig, SlimbertError

log = logging.getLogger(__name__)


class ExportGateError(SlimbertError):
    """An exported model failed verification."""


def input_names(config: PipelineConfig) -> tuple[str, ...]:
    cfg = config.export
    names = ["prepare", cfg.model]
    if cfg.model == "finetune":
        names.append("evaluate")  # the blessing
    if any(tflite_source(target, cfg.model) for target in cfg.targets):
        names.append("quantize")
    return tuple(dict.fromkeys(names))


def fingerprint_config(config: PipelineConfig) -> dict[str, Any]:
    return {"seed": config.seed, "export": config.export, "split": config.evaluate.split,
            "representative_examples": config.quantize.representative_examples}


def _blessing(source_dir: Path, evaluate_dir: Path | None) -> dict[str, Any]:
    path = (evaluate_dir or source_dir) / "blessing.json"
    return json.loads(path.read_text()) if path.is_file() else {"blessed": False,
                                                                "checks": "missing"}


def run(config: PipelineConfig, inputs: dict[str, Path], out_dir: Path, work_dir: Path,
        force: bool = False) -> dict[str, Any]:
    from core.files import gzip_size
    from core.progress import progress
    from data.input import split_arrays
    from data.tokenizer import BertTokenizer
    from export.flatbuffer import census_summary, op_census
    from export.savedmodel import save_serving_model
    from export.tflite import text_tflite, to_tflite
    from export.verify import verify_in_fresh_process, write_split
    from models.artifact import TOKENIZER_FILES, load_model
    from models.evaluation import classification_metrics, predict_keras

    cfg = config.export
    prep_dir, source_dir = inputs["prepare"], inputs[cfg.model]
    blessing = _blessing(source_dir, inputs.get("evaluate"))
    if not blessing["blessed"] and not force:
        raise ExportGateError(f"the {cfg.model} model is not blessed by evaluation "
                              f"({blessing['checks']}); lower evaluate.min_* or pass --force")
    model, meta = load_model(source_dir)
    labels = meta["labels"]
    tokenizer = BertTokenizer.load(source_dir)
    max_seq_length = tokenizer.max_seq_length
    split = config.evaluate.split
    try:
        features, texts, y_true = split_arrays(prep_dir, split, max_seq_length)
    except ValueError as err:
        raise SlimbertError(f"{err}: nothing to verify exports on") from None
    data_path = work_dir / f"{split}.npz"
    write_split(data_path, features, texts, y_true)
    _, source_probs = predict_keras(model, prep_dir, split, config.finetune.eval_batch_size)

    # --- write the deliverables ---
    made: dict[str, dict[str, Any]] = {}  # target -> {path, reference probabilities, ...}
    if "savedmodel" in cfg.targets:
        version_dir = out_dir / "saved_model" / cfg.name / str(cfg.version)
        assets = [source_dir / name for name in TOKENIZER_FILES]
        log.info("savedmodel: writing %s", version_dir)
        saved = save_serving_model(model, tokenizer, labels, version_dir, assets, cfg.name,
                                   texts[:16] if cfg.warmup_requests else [])
        made["savedmodel"] = {"path": version_dir, "source": cfg.model,
                              "reference": source_probs, **saved}
    tflite_dir = out_dir / "tflite"
    tflite_targets = [t for t in cfg.targets if t != "savedmodel"]
    if tflite_targets:
        tflite_dir.mkdir()
        for name in TOKENIZER_FILES:
            shutil.copyfile(source_dir / name, tflite_dir / name)
    representative = None
    for target in tflite_targets:
        path = tflite_dir / f"{cfg.name}-{target}.tflite"
        reference, source = source_probs, cfg.model
        made_of = tflite_source(target, cfg.model)
        if made_of and made_of[1] == "qat":
            source = made_of[0]
            folder = inputs["quantize"] / source
            shutil.copyfile(folder / "qat.tflite", path)
            reference = np.load(folder / "qat_predictions.npz")["probabilities"]
        elif made_of:
            variant = made_of[1]
            quantized = inputs.get("quantize", Path("-")) / cfg.model / f"{variant}.tflite"
            if quantized.is_file():
                shutil.copyfile(quantized, path)
                log.info("%s: from the quantize stage", target)
            else:
                if variant == "int8" and representative is None:
                    from data.input import representative_examples

                    rows = representative_examples(
                        prep_dir, config.quantize.representative_examples, max_seq_length,
                        config.seed)
                    representative = rows.__iter__
                log.info("%s: converting", target)
                path.write_bytes(to_tflite(
                    model, variant, max_seq_length=max_seq_length,
                    representative=representative if variant == "int8" else None))
        elif target == "text":
            log.info("text: converting tokenizer + %s model (dynamic-range int8)", cfg.model)
            path.write_bytes(text_tflite(model, tokenizer))
        made[target] = {"path": path, "source": source, "reference": reference}
        census = op_census(path.read_bytes())
        made[target]["census"] = census_summary(census)
        # Ops touching a float tensor: what keeps a model from running all-integer.
        made[target]["float_ops"] = sorted({key.split(" ")[0] for key in census["ops"]
                                            if "float32" in key})
    del model

    # --- the gate: every deliverable in a fresh process ---
    results: dict[str, Any] = {}
    failures = []
    bar = progress(total=len(made), desc="export: verifying", unit="model")
    for target, item in made.items():
        probabilities, run_info = verify_in_fresh_process(
            item["path"], data_path, work_dir / f"{target}.npz")
        if probabilities.shape != item["reference"].shape:
            raise ExportGateError(f"{target}: {probabilities.shape} outputs for "
                                  f"{item['reference'].shape} expected")
        predicted = probabilities.argmax(-1)
        reference = item["reference"].argmax(-1)
        metrics = classification_metrics(y_true, predicted, labels)
        source_accuracy = float(np.mean(reference == y_true))
        agreement = float(np.mean(predicted == reference))
        drop = abs(metrics["accuracy"] - source_accuracy)
        passed = drop <= cfg.max_accuracy_drop and agreement >= cfg.min_agreement \
            and run_info["labels"] == labels
        results[target] = {
            "path": str(item["path"].relative_to(out_dir)), "source": item["source"],
            **gzip_size(item["path"]), "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "source_accuracy": round(source_accuracy, 6),
            "accuracy_difference": round(metrics["accuracy"] - source_accuracy, 6),
            "agreement": round(agreement, 6), "passed": passed, "verified_with": run_info,
            **{k: item[k] for k in ("census", "float_ops", "warmup_requests")
               if k in item}}
        log.info("%s: accuracy %.4f (source %.4f), agreement %.4f, %s, %.2f MB -> %s",
                 target, metrics["accuracy"], source_accuracy, agreement,
                 run_info["runtime"], results[target]["bytes"] / 1e6,
                 "passed" if passed else "FAILED")
        if not passed:
            failures.append(f"{target} (accuracy {metrics['accuracy']:.4f} vs "
                            f"{source_accuracy:.4f}, agreement {agreement:.4f})")
        if target in cfg.compare_kernels:
            builtin = results[target]["builtin_kernels"] = _builtin_kernels(
                item["path"], data_path, work_dir / f"{target}-builtin.npz", y_true,
                reference, predicted)
            log.info("%s: on the builtin kernels accuracy %.4f, agreement with the default "
                     "kernels %.4f", target, builtin["accuracy"],
                     builtin["agreement_with_default_kernels"])
        bar.update(1)
    bar.close()
    gate = {"max_accuracy_drop": cfg.max_accuracy_drop, "min_agreement": cfg.min_agreement,
            "passed": not failures, "failures": failures, "forced": bool(force and failures),
            "split": split, "examples": int(len(y_true))}
    if failures and not force:
        raise ExportGateError("export verification failed for " + "; ".join(failures)
                              + " (rerun with --force to keep them anyway)")
    (out_dir / "verification.json").write_text(
        json.dumps({"gate": gate, "targets": results}, indent=2) + "\n")
    return {"gate": gate, "targets": results, "blessing": blessing["blessed"]}


def _builtin_kernels(path: Path, data_path: Path, out: Path, y_true: np.ndarray,
                     reference: np.ndarray, default: np.ndarray) -> dict[str, Any]:
    """The same TFLite file on the runtime's builtin kernels (no XNNPACK), in a fresh
    process: what a runtime without the default delegate predicts. Recorded, not gated."""
    from export.verify import verify_in_fresh_process

    probabilities, run_info = verify_in_fresh_process(path, data_path, out,
                                                      kernels="builtin")
    predicted = probabilities.argmax(-1)
    return {"accuracy": round(float(np.mean(predicted == y_true)), 6),
            "agreement": round(float(np.mean(predicted == reference)), 6),
            "agreement_with_default_kernels": round(float(np.mean(predicted == default)), 6),
            "run_seconds": run_info["run_seconds"]}


if __name__ == "__main__":
    stage_main("export")
