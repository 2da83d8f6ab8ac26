"""Training step time by precision and XLA, on the real length-bucketed batches.

The fine-tune step (`models.training.make_train_step`, AdamW with warmup-decay, weight
decay and clipping) of the default checkpoint's architecture (random weights: speed does
not depend on them), in four variants, each its own model and traced step:

    float32          the default
    mixed_bfloat16   layers built under tf_keras's mixed_bfloat16 policy (bf16 matmuls,
                     float32 variables and softmax/LayerNorm as Keras keeps them)
    float32 + XLA    the replica step compiled with XLA (`finetune.xla`)
    bf16 + XLA       both

The batches are the first `--batches` of an epoch of the training split of a prepare
artifact (`--prepared`), shuffled and padded to length buckets as `slimbert finetune`
does (`data.input.bucket_examples`), so the mix of sequence lengths is the real one. A
first pass over them per variant traces (and for XLA compiles every bucket shape): its
extra time over a timed pass is reported as `first_pass_extra_seconds`. Then in every
round each variant (order rotated per round) runs all batches; its examples/s in a round
is the batches' examples over the wall time, the result the median over rounds, and each
ratio to float32 the median of the within-round ratios.

    python benchmarks/training_precision.py --prepared runs/default/prepare
        [--batches 40] [--batch 32] [--rounds 4] [--variants float32,mixed_bfloat16,...]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import tensorflow as tf
import tf_keras
from tf_keras.src.mixed_precision.policy import policy_scope

import pipeline  # noqa: F401  (Keras 2 before TensorFlow's Keras is touched)
from data.input import bucket_examples, bucket_lengths, read_split
from data.tokenizer import read_tokenizer_config
from models.bert import build_classifier
from models.checkpoints import architecture
from models.optimization import make_optimizer
from models.training import make_train_step
from pipeline.artifacts import library_versions, machine_info
from pipeline.config import ModelConfig

VARIANTS = {"float32": ("float32", False), "mixed_bfloat16": ("mixed_bfloat16", False),
            "float32+xla": ("float32", True), "bf16+xla": ("mixed_bfloat16", True)}


def real_batches(prepared: Path, batch: int, count: int, seed: int = 42):
    """The first `count` bucketed batches of a shuffled epoch: [(features, labels)]."""
    info = read_tokenizer_config(prepared)
    lengths = bucket_lengths(info["max_seq_length"])
    examples = read_split(prepared, "train", with_text=False).shuffle(
        16384, seed=seed, reshuffle_each_iteration=False)
    return list(bucket_examples(examples, batch, lengths).take(count))


class Step:
    def __init__(self, name: str, arch, batches):
        precision, xla = VARIANTS[name]
        self.name, self.batches = name, batches
        with policy_scope(precision):
            self.model = build_classifier(arch, 2, pooling="mean")
        self.optimizer = make_optimizer(peak_lr=5e-5, total_steps=10_000,
                                        warmup_steps=100, weight_decay=0.01, clip_norm=1.0)
        loss = tf_keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf_keras.losses.Reduction.NONE)
        spec = tf.data.Dataset.from_tensors(batches[0]).element_spec
        features, labels = spec
        # The Trainer's step takes any batch and length: the same dynamic signature.
        dyn = ({k: tf.TensorSpec([None, None], v.dtype) for k, v in features.items()},
               tf.TensorSpec([None], labels.dtype))
        self.step = make_train_step(tf.distribute.get_strategy(), self.model,
                                    self.optimizer, loss, xla=xla,
                                    input_signature=list(dyn))
        self.compute_dtype = "/".join(sorted({layer.compute_dtype for layer in self.model.layers
                                              if layer.compute_dtype}))

    def run(self) -> tuple[float, int]:
        started = time.perf_counter()
        examples = 0
        for features, labels in self.batches:
            self.step(features, labels)
            examples += int(labels.shape[0])
        self.model.trainable_variables[0].numpy()  # wait for the device
        return time.perf_counter() - started, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or "float32" not in names:
        parser.error(f"--variants: known {', '.join(VARIANTS)} (float32 required); "
                     f"found {unknown or names}")
    arch = architecture(ModelConfig(checkpoint="builtin"))
    batches = real_batches(args.prepared, args.batch, args.batches)
    padded = [int(f["input_ids"].shape[1]) for f, _ in batches]
    print(f"{len(batches)} batches, padded lengths {sorted(set(padded))}, "
          f"mean {statistics.mean(padded):.1f}", flush=True)
    load_start = os.getloadavg()
    steps, first = [], {}
    for name in names:
        step = Step(name, arch, batches)
        seconds, _ = step.run()
        again, _ = step.run()
        first[name] = round(seconds - again, 2)
        print(f"built {name} (compute dtypes {step.compute_dtype}; first pass "
              f"{seconds:.1f} s, then {again:.1f} s)", flush=True)
        steps.append(step)
    rates = {n: [] for n in names}
    ratios = {n: [] for n in names}
    for round_ in range(args.rounds):
        order = steps[round_ % len(steps):] + steps[:round_ % len(steps)]
        this = {}
        for step in order:
            seconds, examples = step.run()
            this[step.name] = examples / seconds
            rates[step.name].append(examples / seconds)
        for name in names:
            ratios[name].append(this[name] / this["float32"])
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{n} {this[n]:.1f} ex/s" for n in names), flush=True)
    results = {name: {"examples_per_second": round(statistics.median(rates[name]), 2),
                      "speedup_vs_float32": round(statistics.median(ratios[name]), 3),
                      "first_pass_extra_seconds": first[name]} for name in names}
    for name, r in results.items():
        print(f"{name:16s} {r['examples_per_second']:8.1f} ex/s  "
              f"{r['speedup_vs_float32']:.3f}x float32  first pass +"
              f"{r['first_pass_extra_seconds']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "training_precision", "batches": len(batches),
            "batch_size": args.batch, "padded_lengths": padded, "rounds": args.rounds,
            "results": results, "load_average_start": load_start,
            "load_average_end": os.getloadavg(), "machine": machine_info(),
            "versions": library_versions()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
