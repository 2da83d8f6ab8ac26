"""Prune: magnitude-prune the fine-tuned model with tfmot while fine-tuning it further.

Wraps the layers selected by `prune.include`/`prune.exclude` (by default every encoder
linear kernel: attention query/key/value/output, FFN in/out, pooler) with
`prune_low_magnitude` on the `prune.schedule` (PolynomialDecay or ConstantSparsity,
optionally M:N structured; the same final sparsity in every layer, or per-layer targets
from one global magnitude threshold with `prune.allocation: global`), trains with
`UpdatePruningStep` under the `prune.train` settings (same keys and resume behaviour as
`finetune`; `prune.train.distill_weight` adds knowledge distillation from the fine-tuned
model), keeps the best epoch at full target sparsity, strips the wrappers and evaluates
the result like the evaluate stage.

    <run-dir>/prune/
        model.keras, model.json      the stripped (plain) sparse classifier
        labels.txt, vocab.txt, tokenizer.json
        sparsity.json                measured sparsity of every pruned kernel
        metrics.json, blessing.json, predictions.npz   as written by evaluate
        history.json, logs/          the pruning fine-tune
        config.yaml, manifest.json   manifest metrics: sparsity (overall, per-layer
                                     range), parameter counts, gzip sizes before/after
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.cli import stage_main
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

INPUTS = ("prepare", "finetune")


def fingerprint_config(config: PipelineConfig) -> dict[str, Any]:
    return {"seed": config.seed, "prune": config.prune, "evaluate": config.evaluate,
            "eval_batch_size": config.finetune.eval_batch_size}


def run(config: PipelineConfig, inputs: dict[str, Path], out_dir: Path,
        work_dir: Path) -> dict[str, Any]:
    import shutil

    from models import pruning
    from models.artifact import load_model, read_meta, save_model
    from models.bert import BertArchitecture
    from models.evaluation import evaluate_model
    from models.training import Trainer

    cfg = config.prune
    source = inputs["finetune"]
    meta = read_meta(source)
    selected: list[str] = []
    schedule_info: dict[str, Any] = {}

    def build_model(total_steps: int):
        model, _ = load_model(source)
        schedule = pruning.make_schedule(cfg, total_steps)
        selected.extend(pruning.select_layers(model, cfg.include, cfg.exclude))
        schedule_info.update(schedule.get_config())
        if cfg.allocation == "global":
            targets = pruning.global_allocation(model, selected, cfg.final_sparsity,
                                                cfg.max_layer_sparsity)
            schedule_info["layer_targets"] = targets
            log.info("global allocation: layer sparsity %.4f..%.4f",
                     min(targets.values()), max(targets.values()))
            schedule = {name: pruning.make_schedule(cfg, total_steps, target)
                        for name, target in targets.items()}
        wrapped = pruning.wrap_for_pruning(model, schedule, cfg.include, cfg.exclude,
                                           tuple(cfg.m_by_n) or None)
        return wrapped, {"source": str(source), "pruned_layers": list(selected)}

    float_model, _ = load_model(source)
    size_before = pruning.gzipped_weights_size(float_model)
    del float_model

    arch = BertArchitecture(**meta["architecture"])
    trainer = Trainer(cfg.train, seed=config.seed, prep_dir=inputs["prepare"],
                      work_dir=work_dir, arch=arch, build_model=build_model,
                      build_teacher=(lambda: load_model(source)[0])
                      if cfg.train.distills else None,
                      hooks=[pruning.PruningStepHook()], name="prune")
    # Only epochs at the full target sparsity may be kept as best.
    training = trainer.fit(best_from_step=pruning.schedule_end_step(
        pruning.make_schedule(cfg, trainer.total_steps)))
    stripped = pruning.strip(trainer.model)

    kernels = pruning.kernel_sparsity(stripped, selected)
    size_after = pruning.gzipped_weights_size(stripped)
    summary = {**pruning.sparsity_summary(kernels), "target": cfg.final_sparsity,
               "allocation": cfg.allocation, "m_by_n": list(cfg.m_by_n) or None}
    log.info("sparsity of %d pruned kernels: overall %.4f (range %.4f..%.4f); gzip size "
             "%.1f MB -> %.1f MB", len(kernels), summary["overall"], summary["min"],
             summary["max"], size_before["gzip_bytes"] / 1e6, size_after["gzip_bytes"] / 1e6)

    new_meta = {**{k: v for k, v in meta.items() if k != "labels"}, "made_by": "prune",
                "sparsity": summary, "pruned_layers": selected,
                "best_epoch": training["best_epoch"]}
    save_model(stripped, out_dir, new_meta, tokenizer_from=source)
    (out_dir / "sparsity.json").write_text(json.dumps(kernels, indent=2) + "\n")
    (out_dir / "history.json").write_text(json.dumps(training["history"], indent=2) + "\n")
    if trainer.log_dir.is_dir():
        shutil.copytree(trainer.log_dir, out_dir / "logs")
    evaluation = evaluate_model(stripped, read_meta(out_dir)["labels"], inputs["prepare"],
                                split=config.evaluate.split,
                                batch_size=config.finetune.eval_batch_size,
                                min_accuracy=config.evaluate.min_accuracy,
                                min_macro_f1=config.evaluate.min_macro_f1, out_dir=out_dir)
    return {"evaluation": evaluation, "sparsity": summary,
            "parameters": pruning.parameter_counts(stripped, selected),
            "size": {"before": size_before, "after": size_after,
                     "gzip_ratio": round(size_before["gzip_bytes"]
                                         / size_after["gzip_bytes"], 3)},
            "schedule": schedule_info, "pruned_layers": selected, "training": training}


if __name__ == "__main__":
    stage_main("prune")
