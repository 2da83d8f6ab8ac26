"""Training step time: fine-tune, prune-wrapped, QAT and keras-hub, and the MFU they reach.

Four training steps on the identical architecture (the default checkpoint's shape, random
weights: speed does not depend on them), the same fixed-length random batch, AdamW
(warmup-decay schedule, weight decay, global norm clipping) and float32:

- (a) finetune: our step (`models.training.make_train_step`) on `models.bert.build_classifier`;
- (b) prune: the same model wrapped by `models.pruning.wrap_for_pruning` with the
  `--config` file's prune schedule (PolynomialDecay or ConstantSparsity, mask updates every
  `prune.frequency` steps), tfmot's `UpdatePruningStep` stepped before every step through
  `models.pruning.PruningStepHook`, as `slimbert prune` does;
- (c) QAT: the model from `models.quantization.quantize_for_training` (what `slimbert
  quantize` trains), its activation ranges calibrated on the batch;
- (d) keras-hub's Keras 3 `BertTextClassifier` (`finetune_throughput.KerasHub`).

None distills (the default config's prune and QAT runs also run the fine-tuned teacher
forward, about a third more work per step). They are timed in alternating rounds in one
process, so machine noise hits all alike; each one's examples/s is the median over rounds
and each ratio to (a) the median of the ratios within rounds.

The hardware ceiling is the dense fp32 matmul rate of TensorFlow on this machine
(`tf.linalg.matmul` of N x N matrices, N in `--matmul-sizes`, in a tf.function, all
threads), measured in every round too: the ceiling is the median over rounds of the best
size's rate. Model FLOPs per training example = 6 x non-embedding parameters x seq_len +
3 x layers x (2 x 2 x seq_len^2 x hidden) (attention scores and values; training = 3 x
forward), and the model FLOPs utilisation (MFU) is FLOPs per example x examples/s /
ceiling.

    python benchmarks/training_steps.py [--seq-len 128] [--batch 32] [--steps 3]
        [--rounds 4] [--warmup 2] [--config configs/default.yaml]
        [--matmul-sizes 1024,1536,2048] [--matmul-reps 10] [--json out.json]

With `--determinism`, it times instead what repeatable training costs: steps (a), (b)
and (c), each with Keras' stateful dropout, with the step-keyed dropout the Trainer uses
(`models.training.step_dropout`: exact resume), and with that plus
`tf.config.experimental.enable_op_determinism()` (the `deterministic` training key);
each variant is its own model and traced step, switched on or off around its own runs,
in the same alternating rounds (docs/determinism.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
import types
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras
from finetune_throughput import KerasHub, random_batch
from tensorflow.python.framework import config as tf_config

import pipeline  # noqa: F401  (Keras 2 for tf.keras; keras-hub uses Keras 3)
from models import pruning
from models.bert import build_classifier
from models.checkpoints import architecture
from models.optimization import make_optimizer
from models.quantization import quantize_for_training
from models.training import make_train_step, step_dropout
from pipeline.artifacts import library_versions, machine_info
from pipeline.config import ModelConfig, load_config

EMBEDDINGS = ("embeddings_word", "embeddings_position", "embeddings_type")


class OurStep:
    """Our custom training loop's step on a tf_keras model (`make_train_step`)."""

    name = "(a) finetune: slimbert tf_keras"

    def __init__(self, arch, batch: int, seq_len: int):
        self.model = self.build(arch, batch, seq_len)
        self.optimizer = make_optimizer(peak_lr=5e-5, total_steps=10_000, warmup_steps=100,
                                        weight_decay=0.01, clip_norm=1.0)
        loss = tf_keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf_keras.losses.Reduction.NONE)
        self.step = make_train_step(tf.distribute.get_strategy(), self.model, self.optimizer,
                                    loss)
        self.begin()

    def build(self, arch, batch: int, seq_len: int):
        ids, labels = random_batch(batch, seq_len, arch.vocab_size)
        self.features = {"input_ids": tf.constant(ids), "input_mask": tf.ones_like(ids),
                         "segment_ids": tf.zeros_like(ids)}
        self.labels = tf.constant(labels)
        return build_classifier(arch, 2, pooling="mean")

    def begin(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.before_step()
            self.step(self.features, self.labels)
        self.model.trainable_variables[0].numpy()  # wait for the device


class PrunedStep(OurStep):
    name = "(b) prune: tfmot prune_low_magnitude"

    def __init__(self, arch, batch: int, seq_len: int, prune_cfg):
        self.prune_cfg = prune_cfg
        super().__init__(arch, batch, seq_len)

    def build(self, arch, batch: int, seq_len: int):
        model = super().build(arch, batch, seq_len)
        self.schedule = pruning.make_schedule(self.prune_cfg, total_steps=1000)
        self.pruned_layers = pruning.select_layers(model, self.prune_cfg.include,
                                                   self.prune_cfg.exclude)
        return pruning.wrap_for_pruning(model, self.schedule, self.prune_cfg.include,
                                        self.prune_cfg.exclude,
                                        tuple(self.prune_cfg.m_by_n) or None)

    def begin(self) -> None:
        # What the Trainer does with hooks: on_train_begin once, on_step_begin every step.
        self.hook = pruning.PruningStepHook()
        self.trainer = types.SimpleNamespace(model=self.model, optimizer=self.optimizer)
        self.hook.on_train_begin(self.trainer)
        self.steps_done = 0

    def before_step(self) -> None:
        self.hook.on_step_begin(self.trainer)
        self.steps_done += 1

    def mask_updates(self, first: int, last: int) -> int:
        """How many of steps first..last (0-based) update the masks."""
        config = self.schedule.get_config()["config"]
        begin, end, freq = config["begin_step"], config["end_step"], config["frequency"]
        return sum(1 for s in range(first, last + 1)
                   if s >= begin and (end < 0 or s <= end) and (s - begin) % freq == 0)


class QatStep(OurStep):
    name = "(c) QAT: tfmot quantize_apply"

    def build(self, arch, batch: int, seq_len: int):
        model = super().build(arch, batch, seq_len)
        return quantize_for_training(model, calibration=[self.features])


class HubStep(KerasHub):
    name = "(d) keras-hub BertTextClassifier (Keras 3)"


class Variant:
    """A step of (a)-(c) with a dropout source and an op determinism setting: its own
    model and traced step, run with determinism switched to its setting."""

    def __init__(self, make, keyed_dropout: bool, deterministic: bool):
        self.deterministic = deterministic
        self.switch()
        self.step = make()
        self.name = self.step.name.split(":")[0] + (
            ": keras dropout" if not keyed_dropout else
            ": step dropout" + (" + op determinism" if deterministic else ""))
        self.stack = contextlib.ExitStack()  # open for the variant's life: traced inside
        if keyed_dropout:
            self.stack.enter_context(step_dropout(self.step.model, 0,
                                                  self.step.optimizer.iterations))

    def switch(self) -> None:
        # TensorFlow exports no switch-off; its config module has one (for its tests).
        if self.deterministic:
            tf_config.enable_op_determinism()
        else:
            tf_config.disable_op_determinism()

    def run(self, steps: int) -> None:
        self.switch()
        self.step.run(steps)


def determinism_main(args, config, arch) -> None:
    """Time the variants of (a)-(c) in alternating rounds; print and save the medians."""
    load_start = os.getloadavg()
    makers = (lambda: OurStep(arch, args.batch, args.seq_len),
              lambda: PrunedStep(arch, args.batch, args.seq_len, config.prune),
              lambda: QatStep(arch, args.batch, args.seq_len))
    variants = []
    for make in makers:
        for keyed, deterministic in ((False, False), (True, False), (True, True)):
            variant = Variant(make, keyed, deterministic)
            variant.run(args.warmup)
            print(f"built {variant.name}", flush=True)
            variants.append(variant)
    rates: dict[str, list[float]] = {v.name: [] for v in variants}
    for round_ in range(args.rounds):
        time_round(round_, variants, args.steps, args.batch, rates)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    tf_config.disable_op_determinism()
    results = {}
    for i, variant in enumerate(variants):
        base = variants[i - i % 3].name  # the same step with Keras' dropout
        ratios = [r / b for r, b in zip(rates[variant.name], rates[base])]
        results[variant.name] = {"examples_per_second": statistics.median(rates[variant.name]),
                                 "rounds": rates[variant.name],
                                 "ratio_to_keras_dropout": statistics.median(ratios),
                                 "ratio_rounds": ratios}
    print(f"\nbatch {args.batch}, sequence length {args.seq_len}, float32, {args.rounds} "
          f"alternating rounds of {args.steps} steps per variant")
    header = f"{'training step':<58} {'examples/s':>10} {'vs keras dropout':>22}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        span = f"[{min(r['ratio_rounds']):.2f}-{max(r['ratio_rounds']):.2f}]"
        print(f"{name:<58} {r['examples_per_second']:10.2f} "
              f"{r['ratio_to_keras_dropout']:8.3f}x {span:>13}")
    finish(args, load_start, results=results)


def non_embedding_parameters(model) -> int:
    embeddings = sum(model.get_layer(name).count_params() for name in EMBEDDINGS)
    return int(model.count_params() - embeddings)


def flops_per_example(arch, non_embedding: int, seq_len: int) -> dict[str, float]:
    dense = 6 * non_embedding * seq_len
    attention = 3 * arch.num_layers * 2 * 2 * seq_len ** 2 * arch.hidden_size
    return {"dense": float(dense), "attention": float(attention),
            "total": float(dense + attention)}


class Matmul:
    """Dense fp32 matmul rate of TensorFlow, GFLOP/s, at each size."""

    def __init__(self, sizes: list[int], reps: int):
        self.reps = reps
        rng = np.random.default_rng(0)
        self.operands = {n: (tf.constant(rng.standard_normal((n, n), np.float32)),
                             tf.constant(rng.standard_normal((n, n), np.float32)))
                         for n in sizes}

        @tf.function
        def product(a, b):
            return tf.reduce_sum(tf.linalg.matmul(a, b))  # a scalar to fetch: waits for it

        self.product = product
        self.run()  # trace every size

    def run(self) -> dict[int, float]:
        rates = {}
        for n, (a, b) in self.operands.items():
            times = []
            for _ in range(self.reps):
                start = time.perf_counter()
                self.product(a, b).numpy()
                times.append(time.perf_counter() - start)
            rates[n] = 2 * n ** 3 / statistics.median(times) / 1e9
        return rates


LIBRARIES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "keras",
             "keras-hub", "numpy")


def machine() -> dict:
    return {**machine_info(),
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()
            or "all"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (tracing)")
    parser.add_argument("--config", default="configs/default.yaml",
                        help="pipeline config giving the prune schedule")
    parser.add_argument("--matmul-sizes", default="1024,1536,2048")
    parser.add_argument("--matmul-reps", type=int, default=10,
                        help="matmuls per size and round (the median counts)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--determinism", action="store_true",
                        help="time (a)-(c) with Keras' dropout, step-keyed dropout and op "
                             "determinism instead")
    args = parser.parse_args()

    load_start = os.getloadavg()
    config = load_config(args.config)
    arch = architecture(ModelConfig())
    if args.determinism:
        determinism_main(args, config, arch)
        return
    started = time.perf_counter()
    contenders = []
    for make in (lambda: OurStep(arch, args.batch, args.seq_len),
                 lambda: PrunedStep(arch, args.batch, args.seq_len, config.prune),
                 lambda: QatStep(arch, args.batch, args.seq_len),
                 lambda: HubStep(arch, args.batch, args.seq_len)):
        contender = make()
        start = time.perf_counter()
        contender.run(args.warmup)
        print(f"built {contender.name}; {args.warmup} warm-up steps in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        contenders.append(contender)
    matmul = Matmul([int(n) for n in args.matmul_sizes.split(",")], args.matmul_reps)

    rates: dict[str, list[float]] = {c.name: [] for c in contenders}
    ceilings: list[float] = []
    matmul_rounds: list[dict[int, float]] = []
    for round_ in range(args.rounds):
        time_round(round_, contenders, args.steps, args.batch, rates)
        matmul_rounds.append(matmul.run())
        ceilings.append(max(matmul_rounds[-1].values()))
        print(f"round {round_ + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s "
              "since start)", flush=True)

    ours, pruned = contenders[0], contenders[1]
    non_embedding = non_embedding_parameters(ours.model)
    flops = flops_per_example(arch, non_embedding, args.seq_len)
    ceiling = statistics.median(ceilings)
    results = {}
    for c in contenders:
        per_round_ratio = [r / a for r, a in zip(rates[c.name], rates[ours.name])]
        per_round_mfu = [r * flops["total"] / (g * 1e9) for r, g in zip(rates[c.name],
                                                                          ceilings)]
        results[c.name] = {"examples_per_second": statistics.median(rates[c.name]),
                           "rounds": rates[c.name],
                           "seconds_per_step": args.batch / statistics.median(rates[c.name]),
                           "ratio_to_finetune": statistics.median(per_round_ratio),
                           "ratio_to_finetune_rounds": per_round_ratio,
                           "mfu": statistics.median(rates[c.name]) * flops["total"]
                           / (ceiling * 1e9),
                           "mfu_rounds_own_ceiling": per_round_mfu}
    first = args.warmup
    updates = pruned.mask_updates(first, pruned.steps_done - 1)

    print()
    print(f"batch {args.batch}, sequence length {args.seq_len}, float32, {args.rounds} "
          f"alternating rounds of {args.steps} steps per model (after {args.warmup} warm-up)")
    header = (f"{'training step':<44} {'examples/s':>10} {'s/step':>7} {'vs (a)':>17} "
              f"{'MFU':>6}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        span = f"[{min(r['ratio_to_finetune_rounds']):.2f}-" \
               f"{max(r['ratio_to_finetune_rounds']):.2f}]"
        print(f"{name:<44} {r['examples_per_second']:10.2f} {r['seconds_per_step']:7.2f} "
              f"{r['ratio_to_finetune']:5.2f}x {span:>11} {r['mfu']:6.1%}")
    print()
    print(f"matmul ceiling (tf.linalg.matmul fp32, all threads): {ceiling:.1f} GFLOP/s, the "
          "median over rounds of the best size (rounds: "
          + ", ".join(f"{g:.0f}" for g in ceilings) + "; sizes in round 1: "
          + ", ".join(f"{n}: {g:.0f}" for n, g in matmul_rounds[0].items()) + ")")
    print(f"model FLOPs per training example: {flops['total'] / 1e9:.2f} GFLOP = 6 x "
          f"{non_embedding / 1e6:.2f}M non-embedding parameters x {args.seq_len} "
          f"({flops['dense'] / 1e9:.2f}) + attention {flops['attention'] / 1e9:.2f}")
    for c in (contenders[0], contenders[3]):
        r = results[c.name]
        print(f"MFU {c.name}: {r['examples_per_second']:.2f} ex/s x "
              f"{flops['total'] / 1e9:.2f} GFLOP / {ceiling:.1f} GFLOP/s = {r['mfu']:.1%}")
    print(f"prune: {len(pruned.pruned_layers)} layers wrapped; mask updates every "
          f"{pruned.schedule.get_config()['config']['frequency']} steps, {updates} of them "
          f"within the {pruned.steps_done - first} timed steps")
    finish(args, load_start,
           architecture={k: getattr(arch, k) for k in (
               "vocab_size", "hidden_size", "num_layers", "num_heads",
               "intermediate_size", "max_positions")},
           results=results,
           matmul={"sizes": matmul_rounds, "ceiling_gflops": ceiling,
                   "ceiling_rounds": ceilings},
           flops_per_example=flops, non_embedding_parameters=non_embedding,
           prune={"schedule": pruned.schedule.get_config(),
                  "layers": pruned.pruned_layers,
                  "mask_updates_in_timed_steps": updates,
                  "timed_steps": pruned.steps_done - first})


def time_round(round_: int, runners, steps: int, batch: int,
               rates: dict[str, list[float]]) -> None:
    """One timing round: `steps` steps of each runner, in an order reversed every other
    round (so no runner always goes first), each one's examples/s appended to
    `rates[runner.name]`."""
    for runner in runners if round_ % 2 == 0 else runners[::-1]:
        start = time.perf_counter()
        runner.run(steps)
        rates[runner.name].append(steps * batch / (time.perf_counter() - start))


def finish(args, load_start, **fields) -> None:
    """Print the load average over the run and, with --json, write the measurement:
    date, machine, versions, load, the timing settings and `fields`."""
    load_end = os.getloadavg()
    print(f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end "
          f"({os.cpu_count()} cores)")
    if args.json:
        out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
               "versions": library_versions(LIBRARIES),
               "load_average_1min": {"start": load_start[0], "end": load_end[0]},
               "seq_len": args.seq_len, "batch": args.batch, "steps_per_round": args.steps,
               "rounds": args.rounds, "warmup_steps": args.warmup, **fields}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
