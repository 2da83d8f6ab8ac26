"""The training loop shared by fine-tuning, pruning and QAT: a custom loop under
tf.distribute, resumable at the same batch, keeping the best epoch's weights.

`Trainer` trains a Keras classifier on prepared data (`data.input`) with AdamW on a
warmup-decay schedule (`models.optimization`) on length-bucketed batches, one replica
step (`make_train_step`) under `strategy.run` (`models.distribute`). It validates after
every epoch and keeps the best epoch's weights (the later one on a tie). A resumable
checkpoint is written every `checkpoint_every` steps and at each epoch end; a new
`Trainer` on the same work folder resumes from the last one, at the same batch, and ends
with the same weights as a run that was never interrupted: the checkpoint holds the
weights, the optimizer (step, moments), the weight average, the running epoch metrics and
the history; the batches are a function of (seed, epoch) and the dropout masks of (seed,
layer, step, replica) (`StepDropout`), never of a random state that a new process would
restart. A checkpoint that cannot be read (truncated, garbled, from an older layout) is
moved aside with a warning, and the run resumes from the one before, or starts afresh.

What a compression stage adds is passed in: the model builder (e.g. pruning wrappers or
QAT), a teacher builder for distillation (`models.distill`), hooks called at fixed points
of the loop (e.g. `models.pruning.PruningStepHook`) and the first step from which an
epoch may be kept as best (`fit(best_from_step=...)`).

Example:
    >>> trainer = Trainer(cfg, seed=42, prep_dir=prep, work_dir=work, arch=arch,
    ...                   build_model=lambda total_steps: (build_classifier(arch, 2), {}))
    >>> report = trainer.fit()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras.src.mixed_precision.policy import policy_scope

from core.errors import ConfigError
from core.progress import progress
from core.timing import phase
from data.input import (
    batch_examples,
    bucket_examples,
    bucket_lengths,
    count_bucket_batches,
    example_lengths,
    length_sorted,
    perturb_examples,
    read_split,
    token_pool,
)
from data.tokenizer import read_tokenizer_config
from models.bert import BertArchitecture
from models.distill import distillation_loss, hidden_distillation_loss, hidden_state_model
from models.distribute import is_chief, make_strategy, num_input_pipelines, task_name
from models.optimization import WeightAverage, make_optimizer
from models.training_config import TrainConfig

log = logging.getLogger(__name__)


def make_train_step(strategy, model, optimizer, loss_fn, metrics=(), xla: bool = False,
                    teacher=None, distill_weight: float = 0.0,
                    distill_temperature: float = 2.0, distill_hidden_weight: float = 0.0,
                    teacher_layers: Sequence[int] | None = None, input_signature=None,
                    given_teacher_logits: bool = False):
    """`train_step(features, labels)`: one optimizer step on a distributed batch.

    The loss is averaged over the global batch; `metrics` are (mean loss, accuracy)
    metrics updated with the per-example loss and the logits. With `xla`, the replica
    step is compiled with XLA. With a `teacher` model and `distill_weight` w > 0 the
    per-example loss is (1 - w) * loss_fn + w * `distillation_loss`; with
    `distill_hidden_weight` h > 0, h * `hidden_distillation_loss` is added, student layer
    i matched with teacher layer `teacher_layers[i]` (None: layer i). An example
    labelled -1 (a perturbed copy, `data.input.perturb_examples`) has no cross-entropy
    term: its loss is `distillation_loss` alone (plus the hidden term), and the accuracy
    metric skips it.

    With `given_teacher_logits` (distillation from the logits alone) it is
    `train_step(features, labels, teacher_logits)` and runs no teacher: the step on the
    teacher's logits computed beforehand (`TeacherLogits`).
    """
    scaled = hasattr(optimizer, "get_scaled_loss")  # LossScaleOptimizer (mixed_float16)
    distill = teacher is not None and distill_weight > 0
    hidden = teacher is not None and distill_hidden_weight > 0
    if given_teacher_logits and (hidden or not distill):
        raise ValueError("given teacher logits need distillation from the logits alone")
    student_fn, teacher_fn = model, teacher
    if hidden:
        student_fn, teacher_fn = hidden_state_model(model), hidden_state_model(teacher)

    def replica_step(features, labels, given_logits=None):
        with tf.GradientTape() as tape:
            outputs = student_fn(features, training=True)
            logits = outputs[0] if hidden else outputs
            known = labels >= 0
            per_example = loss_fn(tf.maximum(labels, 0), logits)
            teacher_logits = None
            if given_logits is not None:
                teacher_logits = given_logits
            elif distill or hidden:
                teacher_outputs = teacher_fn(features, training=False)
                teacher_logits = tf.stop_gradient(
                    teacher_outputs[0] if hidden else teacher_outputs)
            if distill:
                soft = distillation_loss(logits, teacher_logits, distill_temperature)
                per_example = tf.where(
                    known, (1 - distill_weight) * per_example + distill_weight * soft, soft)
            if hidden:
                teacher_states = teacher_outputs[1:]
                if teacher_layers is not None:
                    teacher_states = [teacher_states[i] for i in teacher_layers]
                per_example += distill_hidden_weight * hidden_distillation_loss(
                    outputs[1:], teacher_states, features["input_mask"])
            loss = tf.nn.compute_average_loss(per_example)
            if scaled:
                loss = optimizer.get_scaled_loss(loss)
        grads = tape.gradient(loss, model.trainable_variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if metrics:
            metrics[0].update_state(per_example)
            metrics[1].update_state(tf.maximum(labels, 0), logits,
                                    sample_weight=tf.cast(known, tf.float32))

    if xla:
        replica_step = tf.function(replica_step, jit_compile=True, reduce_retracing=True)

    if given_teacher_logits:
        signature = None if input_signature is None else [
            *input_signature, tf.TensorSpec([None, model.output_shape[-1]], tf.float32)]

        @tf.function(reduce_retracing=True, input_signature=signature)
        def replay_step(features, labels, teacher_logits):
            strategy.run(replica_step, args=(features, labels, teacher_logits))

        return replay_step

    @tf.function(reduce_retracing=True, input_signature=input_signature)
    def train_step(features, labels):
        strategy.run(replica_step, args=(features, labels))

    return train_step


class TeacherLogits:
    """The teacher's logits of each step of a training, for another training on the same
    batches from the same teacher.

    The quantize stage QAT-trains each source for the same steps on the same batches
    (same seed, split and batch size) with the fine-tuned model as teacher: the teacher
    runs once per batch, in the first training, and the later ones reuse its logits. An
    entry is kept under the step and a digest of the batch's inputs; a step whose batch
    differs runs the teacher (and records it). Every step of a training with a
    `TeacherLogits` takes the logits as an input (the teacher runs in a function of its
    own), so a training's numbers do not depend on whether its logits were recorded or
    replayed. Single-replica training only (several replicas' logits would need
    redistributing).
    """

    def __init__(self) -> None:
        self._logits: dict[tuple[int, str], np.ndarray] = {}
        self.replayed = self.recorded = 0

    @staticmethod
    def key(step: int, features: dict[str, Any]) -> tuple[int, str]:
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(features):
            value = np.asarray(features[name])
            digest.update(f"{name}{value.shape}{value.dtype}".encode())
            digest.update(value.tobytes())
        return step, digest.hexdigest()

    def get(self, key: tuple[int, str]) -> np.ndarray | None:
        logits = self._logits.get(key)
        self.replayed += logits is not None
        return logits

    def put(self, key: tuple[int, str], logits) -> None:
        self._logits[key] = np.asarray(logits)
        self.recorded += 1


class StepDropout:
    """The random source of one Keras `Dropout` layer while a `Trainer` trains: masks
    drawn statelessly from (seed, layer number, training step, replica).

    Keras' own dropout uses stateful random ops, whose state lives in the process and
    restarts in a new one: a run resumed from a checkpoint drew other masks than the run
    it continues. These masks depend only on values the checkpoint holds (the step is the
    optimizer's), so a resumed run draws the very masks of an uninterrupted one. A layer
    called more than once in a step would repeat its mask; our models call each dropout
    layer once per step (a teacher runs without dropout).

    Args:
        seed: int, the training's seed.
        number: int, the layer's position among the model's dropout layers.
        step: the optimizer's `iterations` variable.
    """

    _rng_type = "legacy_stateful"  # what the layer's get_config reads: unchanged config

    def __init__(self, seed: int, number: int, step: tf.Variable) -> None:
        self.key = (int(seed), int(number))
        self.step = step

    def _maybe_init(self) -> None:  # Keras calls it when it builds the layer
        pass

    def dropout(self, inputs, rate, noise_shape=None):
        seed = tf.random.experimental.stateless_fold_in(
            tf.constant(self.key, tf.int64), tf.cast(self.step, tf.int64))
        context = tf.distribute.get_replica_context()
        if context is not None:  # each replica its own masks
            seed = tf.random.experimental.stateless_fold_in(
                seed, tf.cast(context.replica_id_in_sync_group, tf.int64))
        return tf.nn.experimental.stateless_dropout(inputs, rate=rate, seed=seed,
                                                    noise_shape=noise_shape)


@contextlib.contextmanager
def step_dropout(model, seed: int, step: tf.Variable):
    """Within the block, every `Dropout` layer of `model` (wrapped ones and those inside
    attention layers included) draws its masks from a `StepDropout`; the layers' own
    random generators are put back on exit (a SavedModel export expects them)."""
    layers = [m for m in model.submodules if isinstance(m, keras.layers.Dropout)]
    originals = [layer._random_generator for layer in layers]  # noqa: SLF001
    try:
        for number, layer in enumerate(layers):
            layer._random_generator = StepDropout(seed, number, step)  # noqa: SLF001
        yield
    finally:
        for layer, original in zip(layers, originals):
            layer._random_generator = original  # noqa: SLF001


class Trainer:
    """The training loop: one replica step under `strategy.run`, checkpoints, validation.

    Args:
        train_cfg: the training settings (fine-tuning's, or those of the training inside
            pruning or QAT).
        seed: the run's seed, used when `train_cfg.seed` is -1.
        prep_dir: the prepared data (train and validation splits, vocab.txt,
            tokenizer.json); its max_seq_length sets the longest batch.
        work_dir: scratch that survives a crash (checkpoints, history, logs); the same
            folder resumes an interrupted run.
        arch: the encoder's architecture, checked against the prepared data.
        build_model: `build_model(total_steps) -> (model, report)`, called inside the
            strategy scope once the step counts are known; `report` is kept as
            `trainer.checkpoint_report`.
        build_teacher: `build_teacher() -> model`, the model to distill from when
            `train_cfg.distill_weight` or `distill_hidden_weight` > 0; called inside the
            strategy scope before `build_model` (None: no teacher; then those must be 0).
        teacher_layers: for `distill_hidden_weight`, the teacher layer each student layer
            is matched with (a student with fewer layers); None: the same index.
        hooks: objects with any of `on_train_begin`, `on_step_begin`, `on_epoch_end` and
            `on_weights_changed` (after the averaged weights were swapped in), each
            called with the trainer (whose `model` and `optimizer` they may use).
        name: what progress lines and errors call this run.
        teacher_logits: a `TeacherLogits` shared with other trainings on the same batches
            and teacher: steps found there skip the teacher, the others are recorded.
            Used only with one replica and distillation from the logits alone.

    With `train_cfg.ema_decay` > 0 a moving average of the weights is kept from
    `fit`'s `best_from_step` on; from then, validation, the best epoch and the final
    weights are the average's (the history also records the raw weights' validation).
    """

    def __init__(self, train_cfg: TrainConfig, *, seed: int, prep_dir: Path, work_dir: Path,
                 arch: BertArchitecture, build_model: Callable[[int], tuple[Any, dict]],
                 build_teacher: Callable[[], Any] | None = None,
                 teacher_layers: Sequence[int] | None = None,
                 hooks: Sequence[object] = (), name: str = "finetune",
                 teacher_logits: TeacherLogits | None = None) -> None:
        ft = train_cfg
        if ft.distills and build_teacher is None:
            raise ConfigError(f"{name}: distillation needs a "
                              "teacher; only prune and quantize training distill from the "
                              "fine-tuned model")
        self.train_cfg, self.prep_dir = ft, prep_dir
        self.hooks, self.name = list(hooks), name
        self.teacher_logits = teacher_logits
        self.teacher_layers = None if teacher_layers is None else list(teacher_layers)
        info = read_tokenizer_config(prep_dir)
        self.max_seq_length = info["max_seq_length"]
        self.arch = arch
        if self.arch.max_positions < self.max_seq_length:
            raise ConfigError(f"data.max_seq_length {self.max_seq_length} exceeds the "
                              f"checkpoint's {self.arch.max_positions} positions")
        # A vocabulary-pruned student reads the teacher's ids (input_vocab_size).
        model_vocab = self.arch.input_vocab_size or self.arch.vocab_size
        if model_vocab != info["vocab_size"]:
            raise ConfigError(f"the prepared data uses a {info['vocab_size']}-token vocabulary "
                              f"but the model has {model_vocab}; rerun prepare with "
                              "the same model.checkpoint")

        self.strategy = make_strategy(ft.strategy, ft.tpu)
        self.precision = resolve_precision(ft.precision, self.strategy)
        log.info("%s: training precision %s%s", name, self.precision,
                 " (auto)" if ft.precision == "auto" else "")
        self.chief = is_chief(self.strategy)
        self.seed = seed if ft.seed < 0 else ft.seed
        keras.utils.set_random_seed(self.seed)
        if ft.deterministic:
            tf.config.experimental.enable_op_determinism()

        # Every input pipeline (one per worker) reads its shard of the examples and
        # feeds its local replicas per-replica batches; all run the same number of steps
        # per epoch (the largest shard's; smaller shards repeat), so collectives never
        # wait on a worker that ran out of data.
        train = read_split(prep_dir, "train", with_text=False)
        self.buckets = bucket_lengths(self.max_seq_length, ft.bucket_boundaries)
        replicas = self.strategy.num_replicas_in_sync
        if ft.batch_size % replicas:
            raise ConfigError(f"finetune.batch_size {ft.batch_size} is not divisible by the "
                              f"{replicas} replicas")
        self.per_replica_batch = ft.batch_size // replicas
        self.pipelines = num_input_pipelines(self.strategy)
        self.local_replicas = replicas // self.pipelines
        lengths = example_lengths(train)
        self.num_train = len(lengths)
        self.steps_per_epoch = max(
            math.ceil(count_bucket_batches(lengths[i::self.pipelines], self.per_replica_batch,
                                           self.buckets) / self.local_replicas)
            for i in range(self.pipelines))
        self.total_steps = ft.max_steps or ft.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.mean_batch = self.num_train / self.steps_per_epoch
        self.train_examples = train
        if ft.augment_fraction:
            from data.tokenizer import MASK_TOKEN, load_vocab

            self.token_pool = token_pool(train)
            vocab = load_vocab(prep_dir / "vocab.txt")
            self.mask_id = vocab.index(MASK_TOKEN) if MASK_TOKEN in vocab else None

        with self.strategy.scope():
            self.teacher = build_teacher() if build_teacher is not None else None
            # The precision applies to the model built here only (not to the teacher,
            # nor to later stages in the same process): a scope, not the global policy.
            with policy_scope(self.precision):
                self.model, self.checkpoint_report = build_model(self.total_steps)
            optimizer = make_optimizer(
                peak_lr=ft.learning_rate, total_steps=self.total_steps,
                warmup_steps=int(ft.warmup_fraction * self.total_steps),
                weight_decay=ft.weight_decay, clip_norm=ft.clip_norm)
            if self.precision == "mixed_float16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
            self.average = WeightAverage(self.model.trainable_variables, ft.ema_decay) \
                if ft.ema_decay else None
            self.best = tf.Variable(-1.0, trainable=False, name="best_val_accuracy")
            self.train_loss = keras.metrics.Mean()
            self.train_accuracy = keras.metrics.SparseCategoricalAccuracy()
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=keras.losses.Reduction.NONE)

        # The history is checkpointed with the state it describes (JSON text).
        with tf.device("CPU:0"):
            self.history = tf.Variable("[]", trainable=False, name="history")

        # Non-chief workers must save too (collectives), but into their own folder.
        ckpt_dir = work_dir / ("ckpt" if self.chief else f"ckpt-{task_name(self.strategy)}")
        averaged = {} if self.average is None else {
            "average": self.average.average, "average_updates": self.average.updates}
        self.ckpt = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, best=self.best,
            train_loss=self.train_loss, train_accuracy=self.train_accuracy,
            history=self.history, **averaged)
        self.manager = tf.train.CheckpointManager(self.ckpt, ckpt_dir, max_to_keep=2)
        self.best_ckpt = tf.train.Checkpoint(model=self.model)
        self.best_path = str(work_dir / ("best" if self.chief else "best-worker") / "weights")
        self.log_dir = work_dir / "logs"
        self._build_steps()

    # === Steps ===

    def _build_steps(self) -> None:
        model = self.model
        ft = self.train_cfg
        # One graph for every batch shape, traced from the batches' spec (dynamic batch
        # and length): with shape-driven retracing, which batches ran on a graph of fixed
        # shapes depended on the order shapes first came in, so a resumed run (whose
        # first batch is another) ran some steps on another graph, whose fusions round
        # differently.
        features, labels = self.epoch_batches(0, 0).element_spec
        # With a shared TeacherLogits, the step takes the teacher's logits as an input
        # and the teacher runs in a function of its own (only for the steps not found).
        replay = self.teacher_logits is not None and ft.distill_weight > 0 and \
            not ft.distill_hidden_weight and self.strategy.num_replicas_in_sync == 1
        self.train_step = make_train_step(
            self.strategy, model, self.optimizer, self.loss_fn,
            (self.train_loss, self.train_accuracy), xla=ft.xla, teacher=self.teacher,
            distill_weight=ft.distill_weight, distill_temperature=ft.distill_temperature,
            distill_hidden_weight=ft.distill_hidden_weight,
            teacher_layers=self.teacher_layers, input_signature=[features, labels],
            given_teacher_logits=replay)
        self.teacher_step = None
        if replay:
            teacher = self.teacher
            self.teacher_step = tf.function(lambda f: teacher(f, training=False),
                                            input_signature=[features])

        @tf.function(reduce_retracing=True)
        def predict_step(features):
            return model(features, training=False)

        self.predict_step = predict_step

    def epoch_batches(self, epoch: int, skip: int):
        """The distributed batches of `epoch`, without its first `skip` steps."""
        ft = self.train_cfg

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            examples = self.train_examples.shard(context.num_input_pipelines,
                                                 context.input_pipeline_id)
            epoch_seed = self.seed * 1009 + epoch
            examples = examples.shuffle(ft.shuffle_buffer, seed=epoch_seed,
                                        reshuffle_each_iteration=False)
            if ft.augment_fraction:
                examples = perturb_examples(
                    examples, self.token_pool, self.mask_id, ft.augment_fraction,
                    ft.augment_rate, seed=epoch_seed * 1000 + context.input_pipeline_id)
            batches = bucket_examples(examples, self.per_replica_batch, self.buckets).repeat()
            return batches.skip(skip * self.local_replicas) \
                .take((self.steps_per_epoch - skip) * self.local_replicas) \
                .prefetch(tf.data.AUTOTUNE)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    @phase("evaluate")
    def validate(self) -> dict[str, float]:
        # Length-sorted: each batch padded to about its own length (sums need no order).
        examples, _ = length_sorted(read_split(self.prep_dir, "validation",
                                               with_text=False))
        data = batch_examples(examples, self.train_cfg.eval_batch_size)
        correct = total = 0
        loss_sum = 0.0
        for features, labels in data:
            logits = self.predict_step(features)
            loss_sum += float(tf.reduce_sum(self.loss_fn(labels, logits)))
            correct += int(np.sum(np.argmax(logits.numpy(), -1) == labels.numpy()))
            total += int(labels.shape[0])
        return {"val_accuracy": correct / total, "val_loss": loss_sum / total}

    # === Loop ===

    def _step(self, step: int, features, labels) -> None:
        if self.teacher_step is None:
            self.train_step(features, labels)
            return
        key = TeacherLogits.key(step, features)
        logits = self.teacher_logits.get(key)
        if logits is None:
            logits = self.teacher_step(features)
            self.teacher_logits.put(key, logits)
        self.train_step(features, labels, logits)

    def _call_hooks(self, event: str) -> None:
        for hook in self.hooks:
            method = getattr(hook, event, None)
            if method is not None:
                method(self)

    def _summaries(self):
        if not self.chief:
            return tf.summary.create_noop_writer(), tf.summary.create_noop_writer()
        return (tf.summary.create_file_writer(str(self.log_dir / "train")),
                tf.summary.create_file_writer(str(self.log_dir / "validation")))

    def _checkpoints(self) -> list[str]:
        """Prefixes of the numbered checkpoints on disk, newest first. Found by their
        index files, not the manager's `checkpoint` state file: a kill can come between
        writing ckpt-N and recording it there."""
        numbered = {}
        for index in Path(self.manager.directory).glob("ckpt-*.index"):
            number = index.stem.split("-")[-1]
            if number.isdigit():
                numbered[int(number)] = str(index)[:-len(".index")]
        return [numbered[n] for n in sorted(numbered, reverse=True)]

    def _state(self) -> list[tf.Variable]:
        """Every variable the resumable checkpoint holds."""
        found = {id(v): v for v in tf.train.TrackableView(self.ckpt).descendants()
                 if isinstance(v, tf.Variable)}
        return list(found.values())

    @phase("io")
    def _resume(self) -> tuple[int, list[dict[str, Any]]]:
        """Restore the newest checkpoint that can be read and restored; returns its step
        and history ((0, []) when there is none: a fresh start).

        A checkpoint that cannot be read (truncated or garbled by a crash or a full
        disk) or restored (written by an older layout) is moved to `unreadable/` beside
        the checkpoint folder with a warning naming it, and the one before is tried; a
        failed restore is rolled back first, so a fresh start starts from the built
        model. One whose best epoch's weights (`best/`) cannot be read is skipped.
        """
        folder = Path(self.manager.directory)
        set_aside = folder.parent / "unreadable" / folder.name
        best_readable = None
        candidates = self._checkpoints()
        for prefix in candidates:
            problem = _unreadable(prefix)
            if problem is None:
                initial = [(v, v.numpy()) for v in self._state()]
                try:
                    self.ckpt.restore(prefix).assert_existing_objects_matched()
                except Exception as err:  # mismatched objects, shapes or dtypes, ...
                    problem = _first_line(err)
                else:
                    if float(self.best.numpy()) >= 0 and best_readable is None:
                        best_readable = _unreadable(self.best_path) is None
                    if float(self.best.numpy()) < 0 or best_readable:
                        step = int(self.optimizer.iterations.numpy())
                        log.info("%s: resumed from %s at step %d of %d", self.name, prefix,
                                 step, self.total_steps)
                        return step, json.loads(self.history.numpy().decode())
                for variable, value in initial:
                    variable.assign(value)
                if problem is None:
                    log.warning("%s: cannot resume from %s: the best epoch's weights %s "
                                "cannot be read; trying an earlier checkpoint", self.name,
                                prefix, self.best_path)
                    continue
            set_aside.mkdir(parents=True, exist_ok=True)
            for path in Path(prefix).parent.glob(Path(prefix).name + ".*"):
                shutil.move(str(path), str(set_aside / path.name))
            log.warning("%s: cannot resume from checkpoint %s (%s); moved it to %s and "
                        "trying an earlier one", self.name, prefix, problem, set_aside)
        if candidates:
            log.warning("%s: no checkpoint in %s could be resumed; training from the start",
                        self.name, folder)
        return 0, []

    def fit(self, best_from_step: int = 0) -> dict[str, Any]:
        """Train to `train_cfg`'s step count (resuming from the last checkpoint in the
        work folder), then load the best epoch's weights into `model`.

        Epochs ending before `best_from_step` are never kept as the best (e.g. before
        pruning reaches its target sparsity); the weight average starts there too.
        Returns the history and the run's figures (best epoch, steps, throughput, ...).
        """
        resumed_from, history = self._resume()
        with step_dropout(self.model, self.seed, self.optimizer.iterations):
            return self._fit(best_from_step, resumed_from, history)

    def _fit(self, best_from_step: int, resumed_from: int, history: list[dict[str, Any]]
             ) -> dict[str, Any]:
        ft = self.train_cfg
        step = resumed_from
        self._call_hooks("on_train_begin")
        # The first step whose epoch may be kept as best, and where the average starts.
        keep_from = min(best_from_step, self.total_steps)
        train_writer, val_writer = self._summaries()
        train_seconds, trained_steps, first_step_seconds = 0.0, 0, None
        bar = progress(total=self.total_steps, initial=step, desc=self.name, unit="step",
                       items_per_unit=self.mean_batch)
        log.info("training %d steps (%d epochs of %d batches, batch %d, buckets %s) on %d "
                 "replica(s)", self.total_steps, self.epochs, self.steps_per_epoch,
                 ft.batch_size, self.buckets, self.strategy.num_replicas_in_sync)
        while step < self.total_steps:
            epoch = step // self.steps_per_epoch
            in_epoch = step - epoch * self.steps_per_epoch
            if in_epoch == 0:  # (resumed mid-epoch, the restored ones hold its first steps)
                self.train_loss.reset_state()
                self.train_accuracy.reset_state()
            started = time.perf_counter()
            with phase("train"):
                for features, labels in self.epoch_batches(epoch, in_epoch):
                    self._call_hooks("on_step_begin")
                    step_started = time.perf_counter()
                    self._step(step, features, labels)
                    if first_step_seconds is None:  # tracing (and XLA compilation) included
                        first_step_seconds = round(time.perf_counter() - step_started, 2)
                    step += 1
                    if self.average is not None and step >= keep_from:
                        self.average.update()
                    bar.update(1)
                    if step % 20 == 0 or step == self.total_steps:
                        loss = float(self.train_loss.result())
                        bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch + 1)
                        with train_writer.as_default(step=step):
                            tf.summary.scalar("loss", loss)
                            tf.summary.scalar("accuracy", self.train_accuracy.result())
                            tf.summary.scalar("learning_rate",
                                              self.optimizer.learning_rate(step)
                                              if callable(self.optimizer.learning_rate)
                                              else self.optimizer.learning_rate)
                    # An epoch's last step is saved after validation, below.
                    if step % ft.checkpoint_every == 0 and step % self.steps_per_epoch \
                            and step < self.total_steps:
                        with phase("io"):
                            self.manager.save(checkpoint_number=step)
                    if step >= self.total_steps or step % self.steps_per_epoch == 0:
                        break
            self._call_hooks("on_epoch_end")
            seconds = time.perf_counter() - started
            train_seconds += seconds
            trained_steps += step - epoch * self.steps_per_epoch - in_epoch
            record = {"epoch": epoch + 1, "step": step,
                      "train_loss": float(self.train_loss.result()),
                      "train_accuracy": float(self.train_accuracy.result())}
            averaged = self.average is not None and self.average.started
            if averaged:
                record.update({f"{key}_raw": value for key, value in self.validate().items()})
                self.average.swap()
                self._call_hooks("on_weights_changed")
            record.update(**self.validate(), seconds=round(seconds, 2))
            with val_writer.as_default(step=step):
                tf.summary.scalar("loss", record["val_loss"])
                tf.summary.scalar("accuracy", record["val_accuracy"])
            eligible = step >= keep_from
            # Ties go to the later epoch (more steps at the final sparsity, a longer
            # average); compared in the float32 the best value is checkpointed in.
            if eligible and np.float32(record["val_accuracy"]) >= self.best.numpy():
                self.best.assign(record["val_accuracy"])
                with phase("io"):
                    self.best_ckpt.write(self.best_path)
                record["best"] = True
            if averaged:
                self.average.swap()
            history.append(record)
            log.info("epoch %d: train loss %.4f acc %.4f | validation loss %.4f acc %.4f "
                     "(%.0f s)", epoch + 1, record["train_loss"], record["train_accuracy"],
                     record["val_loss"], record["val_accuracy"], seconds)
            self.history.assign(json.dumps(history))
            with phase("io"):
                self.manager.save(checkpoint_number=step)
        bar.close()
        self.best_ckpt.read(self.best_path).assert_existing_objects_matched()
        # A mixed-precision model becomes float32 for what follows (evaluation, the
        # artifact, TFLite): the weights are float32 already, only the compute changes.
        if self.precision != "float32":
            self.model = float32_copy(self.model)
        best = next(h for h in history if h.get("best") and h["step"] == max(
            x["step"] for x in history if x.get("best")))
        return {"history": history, "best_epoch": best["epoch"],
                "best_val_accuracy": best["val_accuracy"], "steps": step,
                "steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs,
                "resumed_from_step": resumed_from,
                "train_seconds": round(train_seconds, 2),
                "first_step_seconds": first_step_seconds,
                "examples_per_second": round(trained_steps * self.mean_batch
                                             / max(train_seconds, 1e-9), 2),
                "replicas": self.strategy.num_replicas_in_sync,
                "precision": self.precision,
                # trainable weights: a student's id remap table is not a parameter
                "parameters": int(sum(np.prod(w.shape) for w in
                                      self.model.trainable_weights)),
                "weight_average": None if self.average is None else {
                    "decay": ft.ema_decay, "from_step": keep_from,
                    "updates": int(self.average.updates.numpy())}}


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16), from the
    flags in /proc/cpuinfo (or `cpuinfo`, its text). Without them TensorFlow emulates
    bf16 matmuls, slower than float32. False where /proc/cpuinfo does not exist."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str, strategy=None, cpuinfo: str | None = None) -> str:
    """The Keras policy `precision` stands for: itself, or for `auto` mixed_bfloat16 on
    TPUs and on CPUs with bf16 instructions, float32 elsewhere (GPUs included: fp16 mixed
    precision has not been measured against float32 here)."""
    if precision != "auto":
        return precision
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return "float32"
    return "mixed_bfloat16" if cpu_has_bf16(cpuinfo) else "float32"


def float32_copy(model: keras.Model) -> keras.Model:
    """`model` itself if no layer has a mixed-precision policy, else the same functional
    model rebuilt with float32 layers and given its weights (mixed-precision variables
    are float32, so the weights are unchanged). Int32 layers (inputs, id lookups) are
    not mixed precision."""
    layers = [layer for layer in model.submodules if isinstance(layer, keras.layers.Layer)]
    if not any(layer.dtype_policy.name.startswith("mixed_") for layer in layers):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        dtype = layer["config"].get("dtype")
        name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if isinstance(name, str) and name.startswith("mixed_"):
            layer["config"]["dtype"] = "float32"
    with policy_scope("float32"):
        copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def _unreadable(prefix: str) -> str | None:
    """Why the checkpoint at `prefix` cannot be read in full, or None if it can. Every
    tensor is read: a truncated data file fails only on the tensors past its end."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_dtype_map():
            reader.get_tensor(key)
    except Exception as err:  # the reader raises IndexError, DataLossError, ...
        return _first_line(err)
    return None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"
