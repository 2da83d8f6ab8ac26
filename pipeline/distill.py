"""Distill: a smaller, faster student cut out of the fine-tuned model and trained from it.

Scores every attention head and FFN neuron of the fine-tuned model (the teacher) by
Taylor importance on `distill.importance_batches` training batches, keeps
`distill.num_layers` of its layers (or `distill.keep_layers`), the `distill.num_heads`
best heads and `distill.intermediate_size` best neurons of each, and the embedding rows
of the tokens the training split uses (`distill.vocabulary`), all initialised from the
teacher's weights (`models.shape_pruning`). The student keeps the teacher's tokenizer:
its first layer maps the teacher's ids to its own rows, removed ids to [UNK]. It is
then fine-tuned by distillation from the teacher under `distill.train` (same keys and
resume behaviour as `finetune`), and evaluated like the evaluate stage. It is a plain
model of our BERT class: `quantize.sources` and `export.model` take `distill`, and the
`student-*` export targets are its TFLite variants.

    <run-dir>/distill/
        model.keras, model.json      the student (architecture with its smaller sizes)
        labels.txt, vocab.txt, tokenizer.json   the teacher's (tokenization unchanged)
        importance.npz               head and neuron scores of the teacher
        metrics.json, blessing.json, predictions.npz   as written by evaluate
        history.json, logs/          the distillation fine-tune
        config.yaml, manifest.json   manifest metrics: shape, parameters and FLOPs per
                                     example of teacher and student, evaluation
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cli import stage_main
from pipeline.config import ConfigError, PipelineConfig

log = logging.getLogger(__name__)

INPUTS = ("prepare", "finetune")


def enabled(config: PipelineConfig) -> bool:
    """Whether `slimbert run` runs the stage (`distill.enabled`)."""
    return config.distill.enabled


def fingerprint_config(config: PipelineConfig) -> dict[str, Any]:
    return {"seed": config.seed, "distill": config.distill, "evaluate": config.evaluate,
            "eval_batch_size": config.finetune.eval_batch_size}


def _token_counts(prep_dir: Path, vocab_size: int) -> np.ndarray:
    from data.input import read_split

    counts = np.zeros(vocab_size, np.int64)
    for example in read_split(prep_dir, "train", with_text=False).as_numpy_iterator():
        np.add.at(counts, example["input_ids"], 1)
    return counts


def _special_ids(prep_dir: Path) -> list[int]:
    from data.tokenizer import MASK_TOKEN, SPECIAL_TOKENS, load_vocab

    vocab = load_vocab(prep_dir / "vocab.txt")
    return [vocab.index(token) for token in (*SPECIAL_TOKENS, MASK_TOKEN) if token in vocab]


def plan_shape(config: PipelineConfig, arch, prep_dir: Path) -> dict[str, Any]:
    """What the student keeps: layers, heads and neurons per layer, token ids (or
    None: all), checked against the teacher's architecture."""
    from data.tokenizer import read_tokenizer_config
    from models.shape_pruning import evenly_spaced_layers, kept_vocabulary

    cfg = config.distill
    if cfg.keep_layers:
        bad = [i for i in cfg.keep_layers if i >= arch.num_layers]
        if bad:
            raise ConfigError(f"invalid config value for 'distill.keep_layers': the teacher "
                              f"has layers 0..{arch.num_layers - 1}, found {bad}")
        layers = sorted(cfg.keep_layers)
    else:
        count = cfg.num_layers or arch.num_layers
        if count > arch.num_layers:
            raise ConfigError(f"invalid config value for 'distill.num_layers': the teacher "
                              f"has {arch.num_layers} layers, found {count}")
        layers = evenly_spaced_layers(arch.num_layers, count)
    for key, total in (("num_heads", arch.num_heads),
                       ("intermediate_size", arch.intermediate_size)):
        if getattr(cfg, key) > total:
            raise ConfigError(f"invalid config value for 'distill.{key}': the teacher has "
                              f"{total} per layer, found {getattr(cfg, key)}")
    tokens = None
    if cfg.vocabulary == "train":
        counts = _token_counts(prep_dir, arch.input_vocab_size or arch.vocab_size)
        tokens = kept_vocabulary(counts, _special_ids(prep_dir),
                                 min_count=cfg.min_token_count, extra=cfg.extra_tokens)
    return {"keep_layers": layers, "num_heads": cfg.num_heads or arch.num_heads,
            "intermediate_size": cfg.intermediate_size or arch.intermediate_size,
            "keep_tokens": tokens,
            "unk_id": read_tokenizer_config(prep_dir)["unk_id"]}


def run(config: PipelineConfig, inputs: dict[str, Path], out_dir: Path,
        work_dir: Path) -> dict[str, Any]:
    from data.input import training_sample
    from data.tokenizer import read_tokenizer_config
    from models.artifact import load_model, save_model
    from models.bert import BertArchitecture
    from models.evaluation import evaluate_model
    from models.shape_importance import head_importance, neuron_importance
    from models.shape_pruning import (
        flops_per_example,
        parameter_breakdown,
        prune_shape,
        student_architecture,
    )
    from models.training import Trainer

    cfg = config.distill
    prep_dir, source = inputs["prepare"], inputs["finetune"]
    teacher, meta = load_model(source)
    arch = BertArchitecture(**meta["architecture"])
    plan = plan_shape(config, arch, prep_dir)

    batches = training_sample(prep_dir, cfg.importance_batches, cfg.train.batch_size,
                              config.seed + 2)
    log.info("scoring %d heads and %d FFN neurons on %d training batches",
             arch.num_layers * arch.num_heads, arch.num_layers * arch.intermediate_size,
             len(batches))
    heads = head_importance(teacher, batches)
    neurons = neuron_importance(teacher, batches)
    np.savez_compressed(out_dir / "importance.npz", heads=heads, neurons=neurons)

    def make_student(model):
        return prune_shape(model, arch, keep_layers=plan["keep_layers"],
                           heads_per_layer=plan["num_heads"],
                           intermediate_size=plan["intermediate_size"],
                           keep_tokens=plan["keep_tokens"], head_scores=heads,
                           neuron_scores=neurons, unk_id=plan["unk_id"])

    student_arch = student_architecture(make_student(teacher), arch)
    log.info("student: layers %s of %d, %d of %d heads, %d of %d FFN neurons, %d of %d "
             "embedding rows", plan["keep_layers"], arch.num_layers, student_arch.num_heads,
             arch.num_heads, student_arch.intermediate_size, arch.intermediate_size,
             student_arch.vocab_size, arch.vocab_size)
    teacher_in_scope: dict[str, Any] = {}

    def build_teacher():
        teacher_in_scope["model"] = load_model(source)[0]
        return teacher_in_scope["model"]

    def build_model(total_steps: int):
        return make_student(teacher_in_scope["model"]), {"source": str(source)}

    trainer = Trainer(cfg.train, seed=config.seed, prep_dir=prep_dir, work_dir=work_dir,
                      arch=student_arch, build_model=build_model,
                      build_teacher=build_teacher, teacher_layers=plan["keep_layers"],
                      name="distill")
    training = trainer.fit()
    student = trainer.model

    seq_length = read_tokenizer_config(prep_dir)["max_seq_length"]
    num_classes = len(meta["labels"])
    pooler = meta.get("pooling") == "cls"
    parameters = {"teacher": parameter_breakdown(teacher),
                  "student": parameter_breakdown(student)}
    parameters["ratio"] = round(parameters["teacher"]["total"]
                                / parameters["student"]["total"], 3)
    flops = {"seq_length": seq_length,
             "teacher": flops_per_example(arch, seq_length, num_classes, pooler),
             "student": flops_per_example(student_arch, seq_length, num_classes, pooler)}
    flops["ratio"] = round(flops["teacher"] / flops["student"], 3)
    shape = {"keep_layers": plan["keep_layers"], "teacher_layers": arch.num_layers,
             "num_heads": student_arch.num_heads, "teacher_heads": arch.num_heads,
             "intermediate_size": student_arch.intermediate_size,
             "teacher_intermediate_size": arch.intermediate_size,
             "vocab_rows": student_arch.vocab_size, "teacher_vocab_rows": arch.vocab_size}
    log.info("student: %.2fM parameters (teacher %.2fM, %.2fx fewer), %.1f MFLOPs per "
             "example at length %d (teacher %.1f, %.2fx fewer)",
             parameters["student"]["total"] / 1e6, parameters["teacher"]["total"] / 1e6,
             parameters["ratio"], flops["student"] / 1e6, seq_length,
             flops["teacher"] / 1e6, flops["ratio"])

    new_meta = {**{k: v for k, v in meta.items() if k != "labels"},
                "architecture": dataclasses.asdict(student_arch), "made_by": "distill",
                "teacher": {"source": str(source),
                            "architecture": dataclasses.asdict(arch)},
                "shape": shape, "best_epoch": training["best_epoch"]}
    save_model(student, out_dir, new_meta, tokenizer_from=source)
    (out_dir / "history.json").write_text(json.dumps(training["history"], indent=2) + "\n")
    if trainer.log_dir.is_dir():
        shutil.copytree(trainer.log_dir, out_dir / "logs")
    evaluation = evaluate_model(student, meta["labels"], prep_dir,
                                split=config.evaluate.split,
                                batch_size=config.finetune.eval_batch_size,
                                min_accuracy=config.evaluate.min_accuracy,
                                min_macro_f1=config.evaluate.min_macro_f1, out_dir=out_dir)
    return {"evaluation": evaluation, "shape": shape, "parameters": parameters,
            "flops_per_example": flops, "training": training}


if __name__ == "__main__":
    stage_main("distill")
