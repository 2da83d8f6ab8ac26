"""Fine-tuning throughput: our tf_keras BERT against keras-hub's Keras 3 BertTextClassifier.

Both models get the identical architecture (the default checkpoint's shape, random
weights: speed does not depend on them), sequence length, batch size and optimizer
(AdamW, global norm clipping), and train on the same fixed-length random batches. The
two are timed in alternating rounds in one process, so machine noise hits both alike;
the ratio is what counts. A last figure shows what length bucketing adds on the real
training split, if a prepare artifact is given.

    python benchmarks/finetune_throughput.py [--seq-len 128] [--batch 32] [--steps 15]
        [--rounds 2] [--prepared runs/default/prepare] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import tensorflow as tf
import tf_keras

import pipeline  # noqa: F401  (Keras 2 for tf.keras; keras-hub uses Keras 3)
from models.bert import build_classifier
from models.checkpoints import architecture
from models.optimization import make_optimizer
from models.training import make_train_step
from pipeline.config import ModelConfig


def random_batch(batch: int, seq_len: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, size=(batch, seq_len), dtype=np.int32)
    labels = rng.integers(0, 2, size=(batch,), dtype=np.int32)
    return ids, labels


class Ours:
    name = "slimbert (tf_keras)"

    def __init__(self, arch, batch, seq_len):
        self.model = build_classifier(arch, 2, pooling="mean")
        optimizer = make_optimizer(peak_lr=5e-5, total_steps=10_000, warmup_steps=100,
                                   weight_decay=0.01, clip_norm=1.0)
        loss = tf_keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf_keras.losses.Reduction.NONE)
        self.step = make_train_step(tf.distribute.get_strategy(), self.model, optimizer, loss)
        ids, labels = random_batch(batch, seq_len, arch.vocab_size)
        self.features = {"input_ids": tf.constant(ids), "input_mask": tf.ones_like(ids),
                         "segment_ids": tf.zeros_like(ids)}
        self.labels = tf.constant(labels)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step(self.features, self.labels)
        self.model.trainable_variables[0].numpy()  # wait for the device


class KerasHub:
    name = "keras-hub BertTextClassifier (Keras 3)"

    def __init__(self, arch, batch, seq_len):
        import keras
        import keras_hub

        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=arch.vocab_size, num_layers=arch.num_layers,
            num_heads=arch.num_heads, hidden_dim=arch.hidden_size,
            intermediate_dim=arch.intermediate_size, max_sequence_length=arch.max_positions,
            num_segments=arch.type_vocab_size, dropout=arch.dropout)
        self.model = keras_hub.models.BertTextClassifier(backbone, num_classes=2,
                                                         preprocessor=None)
        self.model.compile(
            optimizer=keras.optimizers.AdamW(5e-5, weight_decay=0.01, global_clipnorm=1.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False)
        ids, labels = random_batch(batch, seq_len, arch.vocab_size)
        self.x = {"token_ids": ids, "segment_ids": np.zeros_like(ids),
                  "padding_mask": np.ones_like(ids, dtype=bool)}
        self.y = labels

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.model.train_on_batch(self.x, self.y)


def bucketed_examples_per_second(arch, prepared: str, batch: int, steps: int) -> float:
    """Our step on real length-bucketed batches (what `slimbert finetune` runs)."""
    from data.input import bucket_examples, bucket_lengths, read_split
    from data.tokenizer import read_tokenizer_config

    info = read_tokenizer_config(prepared)
    ours = Ours(arch, batch, 16)
    batches = bucket_examples(read_split(prepared, "train", with_text=False).shuffle(4096,
                              seed=0), batch, bucket_lengths(info["max_seq_length"]))
    batches = list(batches.take(steps + 7))
    for features, labels in batches[:7]:  # trace every bucket shape
        ours.step(features, labels)
    examples = 0
    start = time.perf_counter()
    for features, labels in batches[7:]:
        ours.step(features, labels)
        examples += int(labels.shape[0])
    ours.model.trainable_variables[0].numpy()
    return examples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--prepared", help="a prepare artifact for the bucketed figure")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    arch = architecture(ModelConfig())
    contenders = [Ours(arch, args.batch, args.seq_len), KerasHub(arch, args.batch, args.seq_len)]
    for contender in contenders:
        contender.run(args.warmup)
    rates: dict[str, list[float]] = {c.name: [] for c in contenders}
    for round_ in range(args.rounds):
        for contender in contenders if round_ % 2 == 0 else contenders[::-1]:
            start = time.perf_counter()
            contender.run(args.steps)
            rates[contender.name].append(args.steps * args.batch
                                         / (time.perf_counter() - start))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    ours_rate, hub_rate = medians[contenders[0].name], medians[contenders[1].name]
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
              f"{tf.config.threading.get_inter_op_parallelism_threads() or 'all'} threads, "
              f"{__import__('os').cpu_count()} cores", "seq_len": args.seq_len,
              "batch": args.batch, "examples_per_second": medians, "rounds": rates,
              "ratio_ours_over_keras_hub": ours_rate / hub_rate}
    if args.prepared:
        result["ours_bucketed_real_data_examples_per_second"] = bucketed_examples_per_second(
            arch, args.prepared, args.batch, args.steps)
    for name, rate in medians.items():
        print(f"{name:<42} {rate:8.2f} examples/s")
    print(f"{'ratio (ours / keras-hub)':<42} {result['ratio_ours_over_keras_hub']:8.2f}x")
    if args.prepared:
        print(f"{'ours, length-bucketed real batches':<42} "
              f"{result['ours_bucketed_real_data_examples_per_second']:8.2f} examples/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
