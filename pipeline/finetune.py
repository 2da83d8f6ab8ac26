"""Finetune: train the BERT classifier on the prepared splits.

Builds the classifier from `model.*` inside the tf.distribute strategy named by
`finetune.strategy`, loads the pretrained checkpoint, and trains with AdamW (linear
warmup and decay, no weight decay on biases and LayerNorm, global norm clipping) on
length-bucketed batches. Validates after every epoch and keeps the best epoch's weights
(the later one on a tie). A resumable checkpoint is written every
`finetune.checkpoint_every` steps and at each epoch end; rerunning an interrupted stage
resumes from the last one, at the same batch, and ends with the weights an uninterrupted
run ends with (an unreadable checkpoint is set aside with a warning; see
`models.training`).

    <run-dir>/finetune/
        model.keras        the best epoch's classifier (tf_keras; custom layers registered
                           by importing `models`)
        model.json         architecture, pooling, checkpoint report, best epoch
        labels.txt, vocab.txt, tokenizer.json   copied from prepare
        history.json       per epoch: train loss/accuracy, validation loss/accuracy, lr
        logs/              TensorBoard event files (train, validation)
        config.yaml, manifest.json

With `finetune.strategy=multi_worker`, run the same command on every worker with its
TF_CONFIG and its own --run-dir (holding the same prepare artifact); the chief's
artifact is the result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from pipeline.cli import stage_main
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

INPUTS = ("prepare",)


def fingerprint_config(config: PipelineConfig) -> dict[str, Any]:
    return {"seed": config.seed, "model": config.model, "finetune": config.finetune}


def external_inputs(config: PipelineConfig) -> dict[str, Any]:
    """The checkpoint files whose architecture and weights it loads, by content."""
    from models.checkpoints import describe_checkpoint

    return {"checkpoint": describe_checkpoint(config.model)}


def run(config: PipelineConfig, inputs: dict[str, Path], out_dir: Path,
        work_dir: Path) -> dict[str, Any]:
    from models.artifact import read_labels, save_model
    from models.bert import build_classifier
    from models.checkpoints import architecture, load_weights
    from models.training import Trainer

    arch = architecture(config.model)
    labels = read_labels(inputs["prepare"])

    def build_model(total_steps: int):
        model = build_classifier(arch, len(labels), pooling=config.model.pooling)
        return model, load_weights(model, config.model)

    trainer = Trainer(config.finetune, seed=config.seed, prep_dir=inputs["prepare"],
                      work_dir=work_dir, arch=arch, build_model=build_model)
    metrics = trainer.fit()
    meta = {"architecture": dataclasses.asdict(arch), "pooling": config.model.pooling,
            "checkpoint": trainer.checkpoint_report, "best_epoch": metrics["best_epoch"],
            "made_by": "finetune"}
    save_model(trainer.model, out_dir, meta, tokenizer_from=inputs["prepare"])
    (out_dir / "history.json").write_text(json.dumps(metrics["history"], indent=2) + "\n")
    if trainer.log_dir.is_dir():
        shutil.copytree(trainer.log_dir, out_dir / "logs")
    metrics["checkpoint"] = trainer.checkpoint_report
    return metrics


if __name__ == "__main__":
    stage_main("finetune")
