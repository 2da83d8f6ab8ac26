"""Configuration of a training run (`finetune.*`, `prune.train.*`, `quantize.train.*`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.config import Section, check

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
MAX_EPOCHS = 10_000
MAX_STEPS = 100_000_000


@dataclass(frozen=True)
class TrainConfig(Section):
    """One training run: fine-tuning (`finetune.*`), and the training inside pruning
    (`prune.train.*`) and QAT (`quantize.train.*`).

    Attributes:
        epochs: passes over the training split.
        max_steps: stop after this many optimizer steps (0 = all epochs); for tiny runs.
        batch_size: global batch size (split over replicas).
        eval_batch_size: batch size for validation and evaluation.
        learning_rate: peak learning rate of AdamW.
        warmup_fraction: fraction of the steps with linear warmup from 0; then linear
            decay to 0.
        weight_decay: decoupled weight decay; never applied to biases and LayerNorm.
        clip_norm: global gradient norm clipping (0 = off).
        bucket_boundaries: training batches are padded to the smallest boundary that
            fits their longest example (plus max_seq_length); empty = automatic.
        shuffle_buffer: examples in the shuffle buffer.
        checkpoint_every: save a resumable checkpoint every N steps (and at each epoch end).
        strategy: `default`, `mirrored` (all local GPUs), `multi_worker` (TF_CONFIG) or `tpu`.
        tpu: TPU address for the `tpu` strategy ("" = the local/colab TPU).
        precision: `float32`, `mixed_float16` (GPU), `mixed_bfloat16` (TPU, recent CPUs)
            or `auto`: `mixed_bfloat16` on TPUs and on CPUs with bf16 instructions
            (AVX512-BF16 or AMX), else `float32` (`models.training.resolve_precision`).
        xla: compile the training step with XLA.
        distill_weight: knowledge distillation from the fine-tuned float model (prune
            and quantize training only): the loss is (1 - w) * cross-entropy + w * T^2 *
            KL(teacher || student) at temperature T; 0 = off.
        distill_temperature: T, the softmax temperature of the distillation term.
        distill_hidden_weight: h, adds h * the mean squared difference between the
            student's and the teacher's hidden states after every transformer layer
            (padding excluded) to the loss; needs a teacher like distill_weight; 0 = off.
        augment_fraction: share of the training examples that each epoch replaces by a
            perturbed copy (tokens masked, replaced or deleted), learned from the
            teacher's soft labels alone: more distillation data than the labelled
            examples; needs distill_weight > 0; 0 = off.
        augment_rate: in a perturbed copy, the probability that a token is changed
            (masked, replaced by a token drawn from the training text, or deleted,
            equally likely).
        seed: the seed of this training's initialisation, dropout, shuffling and copies;
            -1 (default) = the pipeline's `seed`. Set it to repeat a stage with other draws
            (on the same prepared data) and see how much its results vary.
        ema_decay: average the weights from the first step at which an epoch may be kept
            as best (pruning: the end of the sparsity ramp): the plain mean of the steps
            until 1 / (1 - d) of them are in, then an exponential moving average with
            decay d per step. Validation, the best epoch and the saved model then use the
            average; 0 = off.
        deterministic: run TensorFlow's ops deterministically
            (`tf.config.experimental.enable_op_determinism`, for the rest of the process).
            For GPUs, whose default kernels add in a varying order. On CPU, repeats on one
            machine are bit-identical without it; with it they are too, but with other
            numbers (the cross-entropy takes another route), see docs/determinism.md.
    """

    SECTION: ClassVar[str] = "finetune"

    epochs: int = 3
    max_steps: int = 0
    batch_size: int = 32
    eval_batch_size: int = 128
    learning_rate: float = 5e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    bucket_boundaries: tuple[int, ...] = ()
    shuffle_buffer: int = 16384
    checkpoint_every: int = 200
    strategy: str = "default"
    tpu: str = ""
    precision: str = "float32"
    xla: bool = False
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    distill_hidden_weight: float = 0.0
    augment_fraction: float = 0.0
    augment_rate: float = 0.15
    seed: int = -1
    ema_decay: float = 0.0
    deterministic: bool = False

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size", "shuffle_buffer",
                    "checkpoint_every"):
            check(getattr(self, key) > 0, key, "must be positive")
        check(self.max_steps >= 0, "max_steps", "must be >= 0")
        # Far beyond any useful run, and small enough for the int64 step counters.
        check(self.epochs <= MAX_EPOCHS, "epochs",
              f"at most {MAX_EPOCHS:,}, found {self.epochs:,}")
        check(self.max_steps <= MAX_STEPS, "max_steps",
              f"at most {MAX_STEPS:,}, found {self.max_steps:,}")
        check(0 < self.learning_rate < 1, "learning_rate", "expected 0 < lr < 1")
        check(0 <= self.warmup_fraction < 1, "warmup_fraction", "expected [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.clip_norm >= 0, "clip_norm", "must be >= 0")
        check(all(b > 0 for b in self.bucket_boundaries)
              and list(self.bucket_boundaries) == sorted(set(self.bucket_boundaries)),
              "bucket_boundaries", "expected increasing positive lengths")
        check(self.strategy in STRATEGIES, "strategy",
              f"expected one of {', '.join(STRATEGIES)}, found {self.strategy!r}")
        check(self.precision in PRECISIONS, "precision",
              f"expected one of {', '.join(PRECISIONS)}, found {self.precision!r}")
        check(0 <= self.distill_weight <= 1, "distill_weight", "expected 0..1")
        check(self.distill_temperature > 0, "distill_temperature",
              "must be positive")
        check(self.distill_hidden_weight >= 0, "distill_hidden_weight",
              "must be >= 0")
        check(0 <= self.augment_fraction <= 1, "augment_fraction", "expected 0..1")
        check(0 < self.augment_rate <= 1, "augment_rate", "expected 0 < rate <= 1")
        check(self.seed >= -1, "seed", "expected -1 (the pipeline seed) or >= 0")
        check(0 <= self.ema_decay < 1, "ema_decay", "expected 0 <= decay < 1")
        check(self.augment_fraction == 0 or self.distill_weight > 0,
              "augment_fraction", "perturbed copies have no label of their own; "
              "they need distill_weight > 0 (the teacher's soft labels)")

    @property
    def distills(self) -> bool:
        """Whether training needs a teacher (any distillation term is on)."""
        return self.distill_weight > 0 or self.distill_hidden_weight > 0
