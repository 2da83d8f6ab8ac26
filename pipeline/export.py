"""Export: verified SavedModel and TFLite deliverables for servers, CPUs and edge devices.

Writes every target in `export.targets`, then runs each one in a fresh Python process with
the runtime a user would use (`tf.saved_model.load`; the TFLite adapter, ai-edge-litert
first) on the test split, and compares it with a Keras model (`gate_verdict`). A TFLite
file copied from the quantize stage is not run twice in the adapter: its outputs there
(`quantize/<source>/<variant>_tflite_predictions.npz`, the same runtime, examples and
bytes, checked by sha256) are taken, and `verified_with.reused_from` names them.

- float and dynamic-range targets (`savedmodel`, `savedmodel-ids`, `cpu`, `gpu`, `text`,
  `student-cpu`, `student-gpu`), rule `agreement`: accuracy within
  `export.max_accuracy_drop` of the model they came from (the student's: the distilled
  student), and its predicted label on at least `export.min_agreement` of the examples.
- int8-activation targets (`int8`, `qat`, `pruned-qat`, `student-int8`, `student-qat`),
  rule `int8`: accuracy at most
  `export.max_accuracy_drop` below their Keras twin (the QAT model; for `int8` the
  calibrated quantized model, `quantize/<model>/int8_predictions.npz`), at most
  `export.max_drop_from_float` below the float model they were quantized from
  (`quantize/<source>/source_predictions.npz` when the quantize stage wrote it), and
  agreement with the twin of at least `export.min_int8_agreement` (int8 kernels round
  differently from the twin's, so a few labels flip; a broken conversion flips many).

A failure fails the stage and leaves nothing behind, unless `--force` (then the failures
are recorded). The model must be blessed by evaluation (or `--force`). The targets in
`export.compare_kernels` (the int8 ones by default) also run on the runtime's builtin
kernels instead of XNNPACK; accuracy and agreement there are recorded, not gated. Every
TFLite target's XNNPACK plan (partitions, delegated share of the ops, the ops left on
builtin kernels by type; `export.op_profile.execution_plan`) is recorded too.

    <run-dir>/export/
        saved_model/<name>/<version>/   saved_model.pb, variables/, assets/ (vocab.txt,
                                        labels.txt), assets.extra/tf_serving_warmup_requests
        saved_model/<name>-ids/<version>/  the same layout, core TF ops only: `token_ids`
                                        alone (warm-up requests of token ids); verified in
                                        a process without tensorflow_text, which the gate
                                        checks, with the graph's op types
        tflite/<name>-cpu.tflite        dynamic-range int8 (CPU)
        tflite/<name>-gpu.tflite        float16 weights, builtin ops (GPU delegate)
        tflite/<name>-int8.tflite       int8 matmuls, calibrated ranges, no training
        tflite/<name>-qat.tflite        QAT int8 of the float model (quantize stage)
        tflite/<name>-pruned-qat.tflite prune-preserving QAT int8 of the pruned model
        tflite/<name>-student-*.tflite  the distilled student's cpu, gpu, int8 and QAT
                                        int8 models (same inputs and tokenizer)
        tflite/<name>-text.tflite       raw string in: tokenizer (TF Text ops) + `cpu` model
        tflite/labels.txt, vocab.txt, tokenizer.json   travel with the TFLite models
        verification.json               per target: accuracy, agreement, gate rule and
                                        verdict, runtime, XNNPACK plan (and with
                                        export.compare_kernels: on builtin kernels;
                                        with export.mediapipe: in MediaPipe)
        config.yaml, manifest.json

Token-id TFLite models take `input_ids`, `input_mask`, `segment_ids` (int32 [1,
max_seq_length], from the tokenizer described by tokenizer.json) and return
`probabilities`. With `export.mediapipe` (the default) each also carries the TFLite model
metadata of MediaPipe Tasks' TextClassifier, with vocab.txt and labels.txt packed in
(`export.tflite_metadata`): the file alone classifies raw text on a phone. Each is then
also run by that TextClassifier (`export.mediapipe_tasks`, raw texts in) and gated by
its target's rule; its agreement with the runtime adapter on the same file is recorded.
Loading the SavedModel needs `import tensorflow_text`;
loading `<name>-ids` needs TensorFlow alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from export.targets import INT8_ACTIVATION_VARIANTS, tflite_source
from pipeline.cli import stage_main
from pipeline.config import PipelineConfig, SlimbertError

log = logging.getLogger(__name__)


class ExportGateError(SlimbertError):
    """An exported model failed verification."""


# Accuracies and agreements are fractions of the examples: a bound met exactly passes.
_TOLERANCE = 1e-9


def gate_rule(target: str) -> str:
    """`int8` for the targets with int8 activations, `agreement` for the others."""
    made_of = tflite_source(target, "finetune")
    return "int8" if made_of and made_of[1] in INT8_ACTIVATION_VARIANTS else "agreement"


def gate_verdict(target: str, accuracy: float, twin_accuracy: float,
                 float_accuracy: float | None, agreement: float, cfg) -> dict[str, Any]:
    """Whether an export passes the gate, by the rule of its target (module docstring).

    Args:
        target: str. An export target name.
        accuracy: float. The export's test accuracy.
        twin_accuracy: float. Accuracy of the Keras model it is compared with: the model
            it came from, or for an int8-activation target its quantized Keras twin.
        float_accuracy: float | None. Accuracy of the float model an int8-activation
            target was quantized from (not used by the `agreement` rule).
        agreement: float. Fraction of examples where its label is the twin's.
        cfg: ExportConfig. The thresholds.

    Returns:
        {"rule": "int8" or "agreement", "passed": bool, "failures": [what failed]}.

    Example:
        >>> from pipeline.config import ExportConfig
        >>> gate_verdict("qat", 0.90, 0.902, 0.905, 0.97, ExportConfig())["passed"]
        True
    """
    rule = gate_rule(target)
    failures = []
    twin = "its twin" if rule == "int8" else "its source"
    # int8: a drop below the twin fails, a gain does not (integer kernels round some
    # examples either way; the agreement floor catches a conversion that computes
    # something else). Float and dynamic-range targets must match their source both ways.
    difference = twin_accuracy - accuracy if rule == "int8" else abs(accuracy - twin_accuracy)
    if difference > cfg.max_accuracy_drop + _TOLERANCE:
        failures.append(f"{target}: accuracy {accuracy:.4f} "
                        f"{'is below' if rule == 'int8' else 'differs from'} {twin}'s "
                        f"{twin_accuracy:.4f} by more than {cfg.max_accuracy_drop:g} "
                        "(export.max_accuracy_drop)")
    if rule == "int8":
        if float_accuracy is None:
            raise ValueError(f"{target}: the int8 rule needs the float model's accuracy")
        if float_accuracy - accuracy > cfg.max_drop_from_float + _TOLERANCE:
            failures.append(f"{target}: accuracy {accuracy:.4f} is "
                            f"{float_accuracy - accuracy:.4f} below the float model's "
                            f"{float_accuracy:.4f}, more than {cfg.max_drop_from_float:g} "
                            "(export.max_drop_from_float)")
        if agreement < cfg.min_int8_agreement - _TOLERANCE:
            failures.append(f"{target}: agreement {agreement:.4f} under the int8 floor "
                            f"{cfg.min_int8_agreement:g} (export.min_int8_agreement)")
    elif agreement < cfg.min_agreement - _TOLERANCE:
        failures.append(f"{target}: agreement {agreement:.4f} under {cfg.min_agreement:g} "
                        "(export.min_agreement)")
    return {"rule": rule, "passed": not failures, "failures": failures}


def input_names(config: PipelineConfig) -> tuple[str, ...]:
    cfg = config.export
    names = ["prepare", cfg.model]
    if cfg.model == "finetune":
        names.append("evaluate")  # the blessing
    if any(tflite_source(target, cfg.model) for target in cfg.targets):
        names.append("quantize")
    # The float sources of the QAT and student targets (read when the quantize stage did
    # not save their predictions).
    names += [made_of[0] for target in cfg.targets
              if (made_of := tflite_source(target, cfg.model))]
    return tuple(dict.fromkeys(names))


def fingerprint_config(config: PipelineConfig) -> dict[str, Any]:
    q = config.quantize  # the int8 target's calibration when quantize did not write it
    return {"seed": config.seed, "export": config.export, "split": config.evaluate.split,
            "representative_examples": q.representative_examples,
            "calibration": [q.calibration_batches, q.train.batch_size, q.per_channel,
                            q.outlier_ratio]}


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
    from export.targets import SAVEDMODEL_TARGETS
    from export.tflite import text_tflite, to_tflite
    from export.tflite_metadata import with_metadata
    from export.verify import verify_in_fresh_process, write_split
    from models.artifact import TOKENIZER_FILES, VOCAB_FILE, load_model
    from models.evaluation import classification_metrics, predict_keras

    cfg = config.export
    prep_dir, source_dir = inputs["prepare"], inputs[cfg.model]
    blessing = _blessing(source_dir, inputs.get("evaluate"))
    # Every model a requested target is made of must be blessed (a student target is
    # the student's, whatever export.model is).
    for name in dict.fromkeys([cfg.model, *(made_of[0] for t in cfg.targets
                                            if (made_of := tflite_source(t, cfg.model)))]):
        checked = blessing if name == cfg.model else _blessing(
            inputs[name], inputs.get("evaluate") if name == "finetune" else None)
        if not checked["blessed"] and not force:
            raise ExportGateError(f"the {name} model is not blessed by evaluation "
                                  f"({checked['checks']}); lower evaluate.min_* or pass "
                                  "--force")
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
    batch_size = config.finetune.eval_batch_size
    quantize_dir = inputs.get("quantize", Path("-"))
    # The model the SavedModels and float TFLite targets are made of, in Keras: the
    # quantize stage's saved test pass when there is one (the same model, examples and
    # batches), else measured here.
    saved = quantize_dir / cfg.model / "source_predictions.npz"
    source_probs = _saved_probabilities(saved, y_true) if saved.is_file() else \
        predict_keras(model, prep_dir, split, batch_size)[1]
    # float source model -> test probabilities
    float_probs: dict[str, np.ndarray] = {cfg.model: source_probs}

    def float_probabilities(name: str) -> np.ndarray:
        """Test probabilities of the float model `name` (finetune, prune, distill) in
        Keras."""
        if name not in float_probs:
            saved = quantize_dir / name / "source_predictions.npz"
            if saved.is_file():
                float_probs[name] = _saved_probabilities(saved, y_true)
            else:
                other, _ = load_model(inputs[name])
                float_probs[name] = predict_keras(other, prep_dir, split, batch_size)[1]
                del other
        return float_probs[name]

    def float_accuracy(name: str) -> float:
        return float(np.mean(float_probabilities(name).argmax(-1) == y_true))

    # --- write the deliverables ---
    made: dict[str, dict[str, Any]] = {}  # target -> {path, reference probabilities, ...}
    if "savedmodel" in cfg.targets:
        version_dir = out_dir / "saved_model" / cfg.name / str(cfg.version)
        assets = [source_dir / name for name in TOKENIZER_FILES]
        log.info("savedmodel: writing %s", version_dir)
        saved = save_serving_model(model, tokenizer, labels, version_dir, assets, cfg.name,
                                   texts[:16] if cfg.warmup_requests else [])
        made["savedmodel"] = {"path": version_dir, "source": cfg.model,
                              "reference": source_probs, "twin": f"{cfg.model} model",
                              **saved}
    if "savedmodel-ids" in cfg.targets:  # core TF ops only: no tokenizer inside
        version_dir = out_dir / "saved_model" / f"{cfg.name}-ids" / str(cfg.version)
        log.info("savedmodel-ids: writing %s", version_dir)
        saved = save_serving_model(
            model, None, labels, version_dir, [source_dir / n for n in TOKENIZER_FILES],
            f"{cfg.name}-ids", warmup_ids={k: v[:16] for k, v in features.items()}
            if cfg.warmup_requests else None)
        made["savedmodel-ids"] = {"path": version_dir, "source": cfg.model,
                                  "reference": source_probs, "twin": f"{cfg.model} model",
                                  **saved}
    tflite_dir = out_dir / "tflite"
    tflite_targets = [t for t in cfg.targets if t not in SAVEDMODEL_TARGETS]
    with_mediapipe = _mediapipe_targets(cfg, tokenizer.lower_case)
    if tflite_targets:
        tflite_dir.mkdir()
        for name in TOKENIZER_FILES:
            shutil.copyfile(source_dir / name, tflite_dir / name)
    for target in tflite_targets:
        path = tflite_dir / f"{cfg.name}-{target}.tflite"
        reference, source, twin = source_probs, cfg.model, f"{cfg.model} model"
        adapter_run = None  # the quantize stage's test run of the same bytes
        made_of = tflite_source(target, cfg.model)
        if made_of and made_of[1] == "qat":
            source = made_of[0]
            folder = quantize_dir / source
            shutil.copyfile(folder / "qat.tflite", path)
            reference = _saved_probabilities(folder / "qat_predictions.npz", y_true)
            twin = f"QAT model of {source}"
            adapter_run = _quantize_test_run(folder / "qat_tflite_predictions.npz", path,
                                             y_true, quantize_dir)
        elif made_of:
            source, variant = made_of
            if source != cfg.model:  # a student target: its own float model is the source
                reference, twin = float_probabilities(source), f"{source} model"
            quantized = quantize_dir / source / f"{variant}.tflite"
            saved = quantize_dir / source / "int8_predictions.npz"
            if quantized.is_file():
                shutil.copyfile(quantized, path)
                log.info("%s: from the quantize stage", target)
                adapter_run = _quantize_test_run(
                    quantize_dir / source / f"{variant}_tflite_predictions.npz", path,
                    y_true, quantize_dir)
                if variant == "int8" and saved.is_file():
                    reference = _saved_probabilities(saved, y_true)
                    twin = f"int8 model of {source}"
                elif variant == "int8":
                    log.warning("%s: the quantize stage saved no int8_predictions.npz; "
                                "compared with the %s model instead", target, source)
            else:
                keras_model, keras_meta = (model, meta) if source == cfg.model \
                    else load_model(inputs[source])
                if variant == "int8":
                    log.info("%s: calibrating and converting", target)
                    flat, reference = _int8_conversion(keras_model, keras_meta, config,
                                                       prep_dir, max_seq_length, split)
                    path.write_bytes(flat)
                    twin = f"int8 model of {source}"
                else:
                    log.info("%s: converting", target)
                    path.write_bytes(to_tflite(keras_model, variant,
                                               max_seq_length=max_seq_length))
                del keras_model
        elif target == "text":
            log.info("text: converting tokenizer + %s model (dynamic-range int8)", cfg.model)
            path.write_bytes(text_tflite(model, tokenizer))
        made[target] = {"path": path, "source": source, "reference": reference,
                        "twin": twin, **({"adapter_run": adapter_run} if adapter_run else {})}
        if gate_rule(target) == "int8":
            made[target]["float_accuracy"] = float_accuracy(source)
        census = op_census(path.read_bytes())
        made[target]["census"] = census_summary(census)
        # Ops touching a float tensor: what keeps a model from running all-integer.
        made[target]["float_ops"] = sorted({key.split(" ")[0] for key in census["ops"]
                                            if "float32" in key})
        made[target]["xnnpack"] = xnnpack_plan(path, custom_ops=target == "text")
        if target in with_mediapipe:
            # The model as converted (the quantize stage's file for a copied target),
            # before the metadata makes the bytes differ: the report times it once.
            made[target]["model_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            path.write_bytes(with_metadata(
                path.read_bytes(), vocab=source_dir / VOCAB_FILE, labels=labels,
                name=cfg.name, version=str(cfg.version),
                description=f"BERT text classifier ({target}) of slimbert: "
                            f"{', '.join(labels)}"))
    del model

    # --- the gate: every deliverable in a fresh process ---
    results: dict[str, Any] = {}
    failures = []
    bar = progress(total=len(made), desc="export: verifying", unit="model")
    for target, item in made.items():
        # A file copied from the quantize stage ran there, in the same runtime on the
        # same examples (the same outputs to the bit as a fresh process's run): its
        # outputs are taken, not measured twice. MediaPipe still runs the file as
        # shipped, metadata and all, in a fresh process.
        probabilities, run_info = item.get("adapter_run") or verify_in_fresh_process(
            item["path"], data_path, work_dir / f"{target}.npz")
        if probabilities.shape != item["reference"].shape:
            raise ExportGateError(f"{target}: {probabilities.shape} outputs for "
                                  f"{item['reference'].shape} expected")
        predicted = probabilities.argmax(-1)
        reference = item["reference"].argmax(-1)
        metrics = classification_metrics(y_true, predicted, labels)
        accuracy = metrics["accuracy"]
        source_accuracy = float(np.mean(reference == y_true))
        agreement = float(np.mean(predicted == reference))
        verdict = gate_verdict(target, accuracy, source_accuracy,
                               item.get("float_accuracy"), agreement, cfg)
        if run_info["labels"] != labels:
            verdict["failures"].append(f"{target}: labels {run_info['labels']} instead "
                                       f"of {labels}")
        if target == "savedmodel-ids" and (run_info["tensorflow_text"]
                                           or run_info["non_core_ops"]):
            verdict["failures"].append(
                f"{target}: needs more than core TensorFlow (ops "
                f"{run_info['non_core_ops']}, tensorflow_text imported: "
                f"{run_info['tensorflow_text']})")
        passed = not verdict["failures"]
        results[target] = {
            "path": str(item["path"].relative_to(out_dir)), "source": item["source"],
            **gzip_size(item["path"]), "accuracy": accuracy,
            "macro_f1": metrics["macro_f1"], "rule": verdict["rule"], "twin": item["twin"],
            "source_accuracy": round(source_accuracy, 6),
            "accuracy_difference": round(accuracy - source_accuracy, 6),
            "agreement": round(agreement, 6)}
        if "float_accuracy" in item:
            results[target]["float_accuracy"] = round(item["float_accuracy"], 6)
            results[target]["drop_from_float"] = round(item["float_accuracy"] - accuracy, 6)
        results[target].update({
            "passed": passed, "failures": verdict["failures"], "verified_with": run_info,
            **{k: item[k] for k in ("census", "float_ops", "xnnpack", "warmup_requests",
                                    "model_sha256") if k in item}})
        log.info("%s: accuracy %.4f (%s %.4f), agreement %.4f, %s, %.2f MB -> %s",
                 target, accuracy, item["twin"], source_accuracy, agreement,
                 run_info["runtime"], results[target]["bytes"] / 1e6,
                 "passed" if passed else "FAILED")
        failures += verdict["failures"]
        if target in with_mediapipe:
            results[target]["mediapipe"] = _verify_in_mediapipe(
                target, item, texts, y_true, probabilities, labels, cfg)
            failures += results[target]["mediapipe"]["failures"]
            results[target]["passed"] = not (verdict["failures"]
                                             or results[target]["mediapipe"]["failures"])
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
            "max_drop_from_float": cfg.max_drop_from_float,
            "min_int8_agreement": cfg.min_int8_agreement, "passed": not failures,
            "failures": failures, "forced": bool(force and failures), "split": split,
            "examples": int(len(y_true))}
    if failures and not force:
        raise ExportGateError("export verification failed for " + "; ".join(failures)
                              + " (rerun with --force to keep them anyway)")
    (out_dir / "verification.json").write_text(
        json.dumps({"gate": gate, "targets": results}, indent=2) + "\n")
    return {"gate": gate, "targets": results, "blessing": blessing["blessed"]}


def _mediapipe_targets(cfg, lower_case: bool) -> list[str]:
    """The targets that get MediaPipe's metadata and verification: the token-id TFLite
    ones, with `export.mediapipe`, for an uncased checkpoint (MediaPipe lower-cases every
    text it tokenizes, so a cased model would see other ids there than in training).
    SlimbertError if MediaPipe is needed and missing."""
    from export.mediapipe_tasks import MediaPipeUnavailable, mediapipe_python

    targets = [t for t in cfg.targets if tflite_source(t, cfg.model)]
    if not cfg.mediapipe or not targets:
        return []
    if not lower_case:
        log.warning("mediapipe: no metadata for a cased checkpoint: MediaPipe's BERT "
                    "tokenizer lower-cases all input")
        return []
    try:
        mediapipe_python()
    except MediaPipeUnavailable as err:
        raise SlimbertError(f"{err}; or set export.mediapipe=false") from None
    return targets


def _verify_in_mediapipe(target: str, item: dict[str, Any], texts: list[str],
                         y_true: np.ndarray, runtime_probabilities: np.ndarray,
                         labels: list[str], cfg) -> dict[str, Any]:
    """Run one TFLite file in MediaPipe's TextClassifier (raw texts in, fresh process)
    and gate it by its target's rule, against the same twin as the runtime adapter, and
    by its accuracy: within `export.max_accuracy_drop` of the adapter's on the same file
    (MediaPipe tokenizes non-ASCII text differently, see docs/deployment.md)."""
    from export.mediapipe_tasks import classify_texts

    try:
        scores, info = classify_texts(item["path"], texts)
    except RuntimeError as err:
        return {"passed": False, "failures": [f"{target} in MediaPipe: {err}"]}
    predicted, reference = scores.argmax(-1), item["reference"].argmax(-1)
    accuracy = float(np.mean(predicted == y_true))
    agreement = float(np.mean(predicted == reference))
    verdict = gate_verdict(target, accuracy, float(np.mean(reference == y_true)),
                           item.get("float_accuracy"), agreement, cfg)
    failures = [f"{failure} (in MediaPipe)" for failure in verdict["failures"]]
    if info["labels"] != labels:
        failures.append(f"{target} in MediaPipe: labels {info['labels']} instead of "
                        f"{labels}")
    runtime_predicted = runtime_probabilities.argmax(-1)
    runtime_accuracy = float(np.mean(runtime_predicted == y_true))
    if abs(accuracy - runtime_accuracy) > cfg.max_accuracy_drop + _TOLERANCE:
        failures.append(f"{target} in MediaPipe: accuracy {accuracy:.4f} differs from the "
                        f"runtime adapter's {runtime_accuracy:.4f} on the same file by more "
                        f"than {cfg.max_accuracy_drop:g} (export.max_accuracy_drop)")
    difference = np.abs(scores - runtime_probabilities).max(-1)  # per example
    differs = difference > 1e-4
    result = {
        "accuracy": round(accuracy, 6), "agreement": round(agreement, 6),
        "agreement_with_runtime": round(float(np.mean(predicted == runtime_predicted)), 6),
        "accuracy_minus_runtime": round(accuracy - runtime_accuracy, 6),
        "max_score_difference": round(float(difference.max(initial=0.0)), 6),
        "examples_scored_differently": int(differs.sum()),
        # The texts MediaPipe tokenizes differently (docs/deployment.md, "MediaPipe's tokenizer").
        "differing_texts": [texts[i][:200] for i in np.flatnonzero(differs)[:5]],
        "passed": not failures, "failures": failures, "verified_with": info}
    log.info("%s in MediaPipe: accuracy %.4f, agreement with the runtime adapter %.4f, "
             "%d of %d examples scored differently", target, accuracy,
             result["agreement_with_runtime"], result["examples_scored_differently"],
             len(texts))
    return result


def _quantize_test_run(saved: Path, path: Path, y_true: np.ndarray, quantize_dir: Path
                       ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The quantize stage's test run of the TFLite file copied to `path`: (probabilities,
    run info as `export.verify` gives it), or None when there is none of these bytes
    (e.g. written by an older version), and the gate runs the file itself."""
    if not saved.is_file():
        return None
    with np.load(saved) as data:
        if "info" not in data.files:
            return None
        info = json.loads(str(data["info"]))
    if info.get("sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
        return None
    probabilities = _saved_probabilities(saved, y_true)
    return probabilities, {
        "format": "tflite", "runtime": info["runtime"], "kernels": info["kernels"],
        "input": "token_ids", "labels": info["labels"], "examples": int(len(y_true)),
        "tensorflow_text": False,
        "reused_from": str(saved.relative_to(quantize_dir.parent))}


def _saved_probabilities(path: Path, y_true: np.ndarray) -> np.ndarray:
    """The probabilities in a quantize stage's `*_predictions.npz`, checked to be of the
    examples verified here."""
    saved = np.load(path)
    if not np.array_equal(saved["labels"], y_true):
        raise ExportGateError(f"{path} holds predictions of other examples than the "
                              f"{len(y_true)} verified here; rerun `slimbert quantize`")
    return saved["probabilities"]


def _int8_conversion(model, meta: dict[str, Any], config: PipelineConfig, prep_dir: Path,
                     max_seq_length: int, split: str) -> tuple[bytes, np.ndarray]:
    """The `int8` target when the quantize stage did not write it, made as that stage
    makes it: a quantized copy of `model` with calibrated ranges (QAT's starting point,
    untrained) converted to int8; returns the TFLite file and the copy's probabilities
    on `split` (its twin in the gate)."""
    from data.input import representative_examples
    from export.tflite import to_tflite
    from models.evaluation import predict_keras
    from models.quantization import calibrated_copy

    q = config.quantize
    quantized = calibrated_copy(
        model, prep_dir, calibration_batches=q.calibration_batches,
        batch_size=q.train.batch_size, seed=config.seed + 1,
        preserve_sparsity=bool(meta.get("pruned_layers")), per_channel=q.per_channel,
        split_outliers=q.outlier_ratio)
    rows = representative_examples(prep_dir, q.representative_examples, max_seq_length,
                                   config.seed)
    flat = to_tflite(quantized, "int8", max_seq_length=max_seq_length,
                     representative=rows.__iter__)
    _, probabilities = predict_keras(quantized, prep_dir, split,
                                     config.finetune.eval_batch_size)
    return flat, probabilities


def xnnpack_plan(path: Path, custom_ops: bool = False) -> dict[str, Any]:
    """How the runtime's default XNNPACK delegate takes a TFLite model: its partitions
    (delegate nodes), the share of the model's ops inside them, and the ops left on
    builtin kernels by type. No timing: it only builds an interpreter."""
    from export.op_profile import execution_plan

    plan = execution_plan(path, custom_ops=custom_ops)
    return {"partitions": len(plan["partitions"]), "ops": plan["ops"],
            "delegated_ops": plan["delegated_ops"],
            "delegated_share": plan["delegated_share"], "builtin": plan["builtin"]}


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
