"""Pipeline configuration: one frozen dataclass per stage, nested in `PipelineConfig`.

Precedence: defaults in code < a YAML file < `--set a.b=c` overrides. Unknown keys and
invalid values raise `ConfigError` naming the key before any work starts. The resolved
config is saved with every artifact (`config.yaml`) and hashed into its manifest.

Example:
    >>> cfg = load_config(None, ["data.max_seq_length=32", "seed=7"])
    >>> cfg.data.max_seq_length, cfg.seed
    (32, 7)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml


class SlimbertError(Exception):
    """An error the user can fix; the CLI prints it without a traceback and exits 2."""


class ConfigError(SlimbertError, ValueError):
    """An invalid configuration key or value."""


class ConfigValueError(ConfigError):
    """An invalid value. `key` is relative to the section that checked it; the message
    names it in full (`section.key`)."""

    def __init__(self, key: str, message: str, section: str = "") -> None:
        self.key, self.message, self.section = key, message, section
        full = f"{section}.{key}" if section else key
        super().__init__(f"invalid config value for '{full}': {message}")

    def within(self, section: str) -> ConfigValueError:
        """The same error, named from `section` (e.g. `prune.train` for the finetune keys
        of that section)."""
        return ConfigValueError(self.key, self.message, section)


def _check(condition: bool, key: str, message: str) -> None:
    """Raise ConfigValueError for `key`, relative to the section being checked."""
    if not condition:
        raise ConfigValueError(key, message)


class _Section:
    """A config section: `validate()` checks its values with keys relative to it; errors
    name the section (`SECTION`, or where `_build` found it: `prune.train`, ...)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        try:
            self.validate()
        except ConfigValueError as err:
            raise err.within(self.SECTION) from None

    def validate(self) -> None:
        pass


# === Stage configs ===


DATA_SOURCES = ("rotten_tomatoes", "tfds", "files")
FILE_FORMATS = ("auto", "csv", "tsv", "jsonl")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class DataConfig(_Section):
    """Where examples come from and how they are split and tokenized (stage `prepare`).

    Attributes:
        source: `rotten_tomatoes` (built-in offline corpus), `tfds` (a catalog dataset)
            or `files` (the user's CSV/TSV/JSONL files).
        tfds_name: catalog name with optional config/version, e.g. `glue/sst2`.
        tfds_data_dir: tfds data folder ("" = tfds's default).
        tfds_download: let tfds download and prepare the dataset if absent.
        files: split name -> file, for `files` with given splits.
        path: one file for `files`, split with `split_fractions` and `seed`.
        format: `auto` (from the extension), `csv`, `tsv` or `jsonl`.
        text_key, label_key: column (or tfds feature) names of the text and the label.
        group_key: optional column whose values never straddle two splits (e.g. movie).
        labels: the label vocabulary, in id order; empty = sorted values seen in train.
        drop_labels: label values whose rows are dropped before anything else.
        dedupe: drop rows whose text repeats an earlier row's.
        split_fractions: train/validation/test fractions when the source is one pool.
        splits: output split -> source split expression in tfds syntax
            (e.g. `train[:95%]`); missing entries map a split to itself.
        max_seq_length: tokens per example including [CLS] and [SEP].
        max_examples: keep at most this many examples per split (0 = all); for tiny runs.
    """

    SECTION: ClassVar[str] = "data"

    source: str = "rotten_tomatoes"
    tfds_name: str = ""
    tfds_data_dir: str = ""
    tfds_download: bool = True
    files: dict[str, str] = field(default_factory=dict)
    path: str = ""
    format: str = "auto"
    text_key: str = "text"
    label_key: str = "label"
    group_key: str = ""
    labels: tuple[str, ...] = ()
    drop_labels: tuple[str, ...] = ()
    dedupe: bool = False
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    splits: dict[str, str] = field(default_factory=dict)
    max_seq_length: int = 128
    max_examples: int = 0

    def validate(self) -> None:
        _check(self.source in DATA_SOURCES, "source",
               f"expected one of {', '.join(DATA_SOURCES)}, found {self.source!r}")
        _check(self.format in FILE_FORMATS, "format",
               f"expected one of {', '.join(FILE_FORMATS)}, found {self.format!r}")
        _check(2 < self.max_seq_length <= 4096, "max_seq_length",
               f"expected 3..4096, found {self.max_seq_length}")
        _check(self.max_examples >= 0, "max_examples", "must be >= 0")
        _check(len(self.split_fractions) == 3 and all(f > 0 for f in self.split_fractions)
               and abs(sum(self.split_fractions) - 1.0) < 1e-6, "split_fractions",
               "expected three positive fractions summing to 1, "
               f"found {list(self.split_fractions)}")
        for name in self.splits:
            _check(name in SPLITS, f"splits.{name}", f"split names are {', '.join(SPLITS)}")
        _check(len(set(self.labels)) == len(self.labels), "labels", "labels repeat")
        _check(not set(self.labels) & set(self.drop_labels), "drop_labels",
               "a label cannot be both declared and dropped")
        _check(bool(self.text_key) and bool(self.label_key), "text_key",
               "text_key and label_key must be set")
        if self.source == "tfds":
            _check(bool(self.tfds_name), "tfds_name", "required when data.source is tfds")
        if self.source == "files":
            _check(bool(self.files) != bool(self.path), "files",
                   "set exactly one of data.files (given splits) or data.path (one file)")
            if self.files:
                for name in self.files:
                    _check(bool(self.files[name]), f"files.{name}", "empty path")

    def source_split(self, split: str) -> str:
        """The source split expression that feeds output split `split`."""
        return self.splits.get(split, split)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The BERT checkpoint and architecture.

    Attributes:
        checkpoint: `builtin` (all-MiniLM-L6-v2, shipped offline), `random` (random
            init from the fields below), a Hugging Face BERT folder, or
            `keras_hub:<preset name or folder>`.
        vocab: vocabulary file for `random` ("" = the built-in checkpoint's).
        lower_case: lower-case and strip accents; None = as the checkpoint says.
        hidden_size, num_layers, num_heads, intermediate_size, max_positions,
            type_vocab_size: architecture of a `random` model (checkpoints bring their own).
        dropout: dropout rate of the encoder and head.
        pooling: `cls` (pooler over [CLS]) or `mean` (mean over real tokens).
    """

    SECTION: ClassVar[str] = "model"

    checkpoint: str = "builtin"
    vocab: str = ""
    lower_case: bool | None = None
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    pooling: str = "mean"

    def validate(self) -> None:
        _check(bool(self.checkpoint), "checkpoint", "must not be empty")
        _check(self.pooling in ("cls", "mean"), "pooling",
               f"expected cls or mean, found {self.pooling!r}")
        _check(0.0 <= self.dropout < 1.0, "dropout", "expected 0 <= dropout < 1")
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_positions", "type_vocab_size"):
            _check(getattr(self, key) > 0, key, "must be positive")
        _check(self.hidden_size % self.num_heads == 0, "num_heads",
               f"hidden_size {self.hidden_size} is not divisible by {self.num_heads} heads")


STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclass(frozen=True)
class FinetuneConfig(_Section):
    """Fine-tuning (stage `finetune`).

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
        precision: `float32`, `mixed_float16` (GPU) or `mixed_bfloat16` (TPU, recent CPUs).
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

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size", "shuffle_buffer",
                    "checkpoint_every"):
            _check(getattr(self, key) > 0, key, "must be positive")
        _check(self.max_steps >= 0, "max_steps", "must be >= 0")
        _check(0 < self.learning_rate < 1, "learning_rate", "expected 0 < lr < 1")
        _check(0 <= self.warmup_fraction < 1, "warmup_fraction", "expected [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(self.clip_norm >= 0, "clip_norm", "must be >= 0")
        _check(all(b > 0 for b in self.bucket_boundaries)
               and list(self.bucket_boundaries) == sorted(set(self.bucket_boundaries)),
               "bucket_boundaries", "expected increasing positive lengths")
        _check(self.strategy in STRATEGIES, "strategy",
               f"expected one of {', '.join(STRATEGIES)}, found {self.strategy!r}")
        _check(self.precision in PRECISIONS, "precision",
               f"expected one of {', '.join(PRECISIONS)}, found {self.precision!r}")
        _check(0 <= self.distill_weight <= 1, "distill_weight", "expected 0..1")
        _check(self.distill_temperature > 0, "distill_temperature",
               "must be positive")
        _check(self.distill_hidden_weight >= 0, "distill_hidden_weight",
               "must be >= 0")
        _check(0 <= self.augment_fraction <= 1, "augment_fraction", "expected 0..1")
        _check(0 < self.augment_rate <= 1, "augment_rate", "expected 0 < rate <= 1")
        _check(self.seed >= -1, "seed", "expected -1 (the pipeline seed) or >= 0")
        _check(0 <= self.ema_decay < 1, "ema_decay", "expected 0 <= decay < 1")
        _check(self.augment_fraction == 0 or self.distill_weight > 0,
               "augment_fraction", "perturbed copies have no label of their own; "
               "they need distill_weight > 0 (the teacher's soft labels)")

    @property
    def distills(self) -> bool:
        """Whether training needs a teacher (any distillation term is on)."""
        return self.distill_weight > 0 or self.distill_hidden_weight > 0


@dataclass(frozen=True)
class EvaluateConfig(_Section):
    """Evaluation and blessing (stage `evaluate`).

    A model is blessed when it meets every threshold; export refuses an unblessed model
    unless forced.

    Attributes:
        split: the split to report (`test`; `validation` for model selection studies).
        min_accuracy: lowest accuracy that blesses the model.
        min_macro_f1: lowest macro-F1 that blesses the model.
    """

    SECTION: ClassVar[str] = "evaluate"

    split: str = "test"
    min_accuracy: float = 0.0
    min_macro_f1: float = 0.0

    def validate(self) -> None:
        _check(self.split in SPLITS, "split", f"expected one of {', '.join(SPLITS)}")
        for key in ("min_accuracy", "min_macro_f1"):
            _check(0 <= getattr(self, key) <= 1, key, "expected 0..1")


PRUNE_SCHEDULES = ("polynomial", "constant")
PRUNE_ALLOCATIONS = ("uniform", "global")


@dataclass(frozen=True)
class PruneConfig(_Section):
    """Magnitude pruning with tfmot (stage `prune`).

    Attributes:
        schedule: `polynomial` (PolynomialDecay from initial to final sparsity between
            begin and end step) or `constant` (ConstantSparsity at final_sparsity from
            begin_step).
        initial_sparsity, final_sparsity: sparsity of each pruned layer (`uniform`
            allocation) or of all pruned kernels together (`global`).
        allocation: `uniform` (every pruned layer reaches final_sparsity) or `global`
            (one magnitude threshold over all pruned kernels of the source model sets each
            layer's final sparsity, so that final_sparsity of all their weights are zero;
            layers with many small weights are pruned more). Within a layer tfmot prunes
            by magnitude either way.
        max_layer_sparsity: with `global`, no layer is pruned beyond this; the threshold
            rises so that the others make up the difference.
        begin_step: first step that prunes.
        end_step: last step of the polynomial ramp (0 = end_fraction of the steps).
        end_fraction: where the ramp ends when end_step is 0, as a fraction of all steps.
        frequency: steps between mask updates.
        m_by_n: [] (unstructured) or [M, N], e.g. [2, 4]: M zeros in every N consecutive
            weights (2-D kernels only).
        include, exclude: regular expressions over layer names; a layer tfmot can prune
            is pruned if it matches an include and no exclude pattern. The defaults prune
            every encoder linear kernel (attention q/k/v/o, FFN, pooler) and leave the
            embeddings and the classifier dense. LayerNorm and biases are never pruned.
        train: the fine-tuning run during pruning (same keys as `finetune`).
    """

    SECTION: ClassVar[str] = "prune"

    schedule: str = "polynomial"
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.8
    allocation: str = "uniform"
    max_layer_sparsity: float = 0.95
    begin_step: int = 0
    end_step: int = 0
    end_fraction: float = 0.75
    frequency: int = 50
    m_by_n: tuple[int, ...] = ()
    include: tuple[str, ...] = (".*",)
    exclude: tuple[str, ...] = ("embeddings_.*", "classifier")
    train: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(
        epochs=3, learning_rate=5e-5, warmup_fraction=0.0))

    def validate(self) -> None:
        _check(self.schedule in PRUNE_SCHEDULES, "schedule",
               f"expected one of {', '.join(PRUNE_SCHEDULES)}, found {self.schedule!r}")
        _check(self.allocation in PRUNE_ALLOCATIONS, "allocation",
               f"expected one of {', '.join(PRUNE_ALLOCATIONS)}, found {self.allocation!r}")
        _check(0 < self.max_layer_sparsity < 1 and (
            self.allocation == "uniform" or self.max_layer_sparsity >= self.final_sparsity),
            "max_layer_sparsity", "expected (0, 1) and, with allocation 'global', at "
            f"least final_sparsity; found {self.max_layer_sparsity}")
        _check(self.allocation == "uniform" or not self.m_by_n, "allocation",
               "m_by_n sparsity is the same in every layer: use allocation 'uniform'")
        _check(0 <= self.initial_sparsity < 1, "initial_sparsity", "expected [0, 1)")
        _check(0 < self.final_sparsity < 1, "final_sparsity", "expected (0, 1)")
        _check(self.initial_sparsity <= self.final_sparsity, "initial_sparsity",
               "must not exceed final_sparsity")
        _check(self.begin_step >= 0 and self.end_step >= 0, "begin_step",
               "steps must be >= 0")
        _check(self.end_step == 0 or self.end_step > self.begin_step, "end_step",
               "must come after begin_step")
        _check(0 < self.end_fraction <= 1, "end_fraction", "expected (0, 1]")
        _check(self.frequency > 0, "frequency", "must be positive")
        pair = list(self.m_by_n)
        _check(not pair or (len(pair) == 2 and 0 < pair[0] < pair[1]), "m_by_n",
               f"expected [] or [M, N] with 0 < M < N (e.g. [2, 4]), found {pair}")
        for key in ("include", "exclude"):
            for pattern in getattr(self, key):
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ConfigValueError(key, f"{pattern!r} is not a regular "
                                           f"expression ({err})") from None


QUANTIZE_SOURCES = ("finetune", "prune")
POST_TRAINING_KINDS = ("float32", "dynamic_int8", "float16", "full_int8")


@dataclass(frozen=True)
class QuantizeConfig(_Section):
    """Quantization (stage `quantize`): QAT with tfmot and post-training TFLite variants.

    Attributes:
        sources: the artifacts to quantize: `finetune` (the float model) and/or `prune`
            (the sparse model; its QAT keeps every pruned zero).
        post_training: TFLite variants converted from each source without training:
            `float32` (reference), `dynamic_int8` (int8 weights, float activations),
            `float16` (float16 weights), `full_int8` (int8 weights and activations,
            int8 logits, ranges from `representative_examples`).
        qat: run quantization-aware training on each source and convert it to an int8
            TFLite model (`qat_int8`; from a pruned source: prune-preserving QAT).
        representative_examples: training examples that calibrate full-int8 ranges
            and the ranges QAT leaves to the converter.
        calibration_batches: training batches that set the QAT model's activation
            ranges before training (0 = tfmot's [-6, 6] start).
        per_channel: QAT quantizes the FFN kernels with one range per output channel
            (TFLite per-channel int8 weights) instead of one per kernel.
        outlier_ratio: QAT gives the FFN output channels whose largest value on the
            calibration batches exceeds this multiple of the median channel's an int8
            range of their own (a second, narrow matmul); 0 = one range for all.
            Needs `calibration_batches`.
        train: the QAT fine-tune (same keys as `finetune`).
    """

    SECTION: ClassVar[str] = "quantize"

    sources: tuple[str, ...] = QUANTIZE_SOURCES
    post_training: tuple[str, ...] = POST_TRAINING_KINDS
    qat: bool = True
    representative_examples: int = 256
    calibration_batches: int = 8
    per_channel: bool = True
    outlier_ratio: float = 4.0
    train: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(
        epochs=1, learning_rate=1e-5, warmup_fraction=0.1))

    def validate(self) -> None:
        _check(len(self.sources) > 0 and len(set(self.sources)) == len(self.sources)
               and all(s in QUANTIZE_SOURCES for s in self.sources), "sources",
               f"expected distinct names from {', '.join(QUANTIZE_SOURCES)}, "
               f"found {list(self.sources)}")
        _check(all(k in POST_TRAINING_KINDS for k in self.post_training)
               and len(set(self.post_training)) == len(self.post_training),
               "post_training",
               f"expected distinct names from {', '.join(POST_TRAINING_KINDS)}, "
               f"found {list(self.post_training)}")
        _check(self.qat or self.post_training, "post_training",
               "nothing to do: empty and quantize.qat is false")
        _check(self.representative_examples > 0, "representative_examples",
               "must be positive")
        _check(self.calibration_batches >= 0, "calibration_batches", "must be >= 0")
        _check(self.outlier_ratio == 0 or self.outlier_ratio > 1, "outlier_ratio",
               f"must be 0 (off) or above 1, found {self.outlier_ratio!r}")
        _check(self.outlier_ratio == 0 or self.calibration_batches > 0, "outlier_ratio",
               "needs quantize.calibration_batches > 0 to find the outlier channels "
               "(or set quantize.outlier_ratio: 0)")


EXPORT_TARGETS = ("savedmodel", "cpu", "gpu", "int8", "qat", "pruned-qat", "text")
EXPORT_MODELS = ("finetune", "prune")


@dataclass(frozen=True)
class ExportConfig(_Section):
    """Deliverables (stage `export`) and their verification gate.

    Attributes:
        model: the Keras model behind the SavedModel and the `cpu`, `gpu`, `int8` and
            `text` TFLite models: `finetune` (float) or `prune` (sparse).
        name: model name (TF Serving folder `saved_model/<name>/<version>`, TFLite files
            `<name>-<target>.tflite`).
        version: TF Serving version number.
        targets: what to export: `savedmodel` (raw strings in, TF Serving layout),
            `cpu` (dynamic-range int8 TFLite), `gpu` (float16 TFLite), `int8` (full
            integer TFLite), `qat` and `pruned-qat` (the quantize stage's QAT int8 models
            of the float and pruned model), `text` (raw-string TFLite with the
            tokenizer as TF Text ops).
        max_accuracy_drop: the gate: an export's test accuracy must be within this of
            the model it came from ...
        min_agreement: ... and agree with its predictions on at least this fraction.
        warmup_requests: write TF Serving warm-up requests into the SavedModel.
        compare_kernels: TFLite targets that also run on the runtime's builtin kernels
            (without its XNNPACK delegate), their accuracy and agreement recorded there;
            not part of the gate. The default: the int8-activation targets, whose
            predictions depend on the kernels' rounding (the float and hybrid ones only
            take longer there: 3 min for `cpu` on the default model).
    """

    SECTION: ClassVar[str] = "export"

    model: str = "finetune"
    name: str = "slimbert"
    version: int = 1
    targets: tuple[str, ...] = EXPORT_TARGETS
    max_accuracy_drop: float = 0.005
    min_agreement: float = 0.99
    warmup_requests: bool = True
    compare_kernels: tuple[str, ...] = ("int8", "qat", "pruned-qat")

    def validate(self) -> None:
        _check(self.model in EXPORT_MODELS, "model",
               f"expected one of {', '.join(EXPORT_MODELS)}, found {self.model!r}")
        _check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) is not None,
               "name", f"expected letters, digits, '_', '.', '-', found {self.name!r}")
        _check(self.version > 0, "version", "must be positive")
        _check(len(self.targets) > 0 and len(set(self.targets)) == len(self.targets)
               and all(t in EXPORT_TARGETS for t in self.targets), "targets",
               f"expected distinct names from {', '.join(EXPORT_TARGETS)}, "
               f"found {list(self.targets)}")
        _check(all(t in EXPORT_TARGETS and t != "savedmodel" for t in self.compare_kernels),
               "compare_kernels", f"expected TFLite target names, found "
               f"{list(self.compare_kernels)}")
        _check(0 <= self.max_accuracy_drop <= 1, "max_accuracy_drop", "expected 0..1")
        _check(0 <= self.min_agreement <= 1, "min_agreement", "expected 0..1")


@dataclass(frozen=True)
class ReportConfig(_Section):
    """The run report (stage `report`): every model's accuracy, size and speed.

    Attributes:
        latency_runs: batch-1 calls timed per model and thread count (median, p95).
        warmup: untimed calls before timing.
        threads: thread counts to time batch 1 with (0 = all cores).
        throughput_batch: batch size of the throughput figure (all cores).
        throughput_runs: timed batches per model (0 = no throughput figure).
        examples: test examples the timed calls cycle through.
    """

    SECTION: ClassVar[str] = "report"

    latency_runs: int = 50
    warmup: int = 3
    threads: tuple[int, ...] = (1, 0)
    throughput_batch: int = 32
    throughput_runs: int = 3
    examples: int = 256

    def validate(self) -> None:
        for key in ("latency_runs", "throughput_batch", "examples"):
            _check(getattr(self, key) > 0, key, "must be positive")
        for key in ("warmup", "throughput_runs"):
            _check(getattr(self, key) >= 0, key, "must be >= 0")
        _check(len(self.threads) > 0 and all(t >= 0 for t in self.threads)
               and len(set(self.threads)) == len(self.threads), "threads",
               f"expected distinct counts >= 0 (0 = all cores), found {list(self.threads)}")


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline: a seed and one section per stage."""

    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        for key in ("augment_fraction", "distill_weight", "distill_hidden_weight"):
            if getattr(self.finetune, key) > 0:
                raise ConfigError(f"invalid config value for 'finetune.{key}': "
                                  "fine-tuning has no teacher; distillation is for "
                                  "prune.train and quantize.train")
        needs = {"qat": "finetune", "pruned-qat": "prune"}
        for target, source in needs.items():
            if target in self.export.targets and not (
                    self.quantize.qat and source in self.quantize.sources):
                raise ConfigError(
                    f"invalid config value for 'export.targets': {target!r} needs "
                    f"quantize.qat true and {source!r} in quantize.sources (or drop "
                    f"{target!r} from export.targets)")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# === Loading ===


def _plain(value: Any) -> Any:
    """Dataclasses to dicts and tuples to lists, recursively, so YAML and JSON round-trip."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_hash(data: Any) -> str:
    """sha256 of the canonical JSON form of `data` (a config or a part of one)."""
    text = json.dumps(_plain(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, base: Any = None) -> Any:
    """Check `value` against annotation `tp`; returns the value in the field's type.

    `base` is the field's default when it is a section: keys not given keep its values.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"invalid value for '{key}'")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section: expected a mapping, "
                              f"found {value!r}")
        return _build(tp, value, key, base)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, found {value!r}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, found {value!r}")
        _, value_tp = typing.get_args(tp)
        return {str(k): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, found {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint}; valid keys here: "
                              f"{', '.join(names)}")
        default = getattr(base, key) if base is not None else (
            fields[key].default_factory()
            if fields[key].default_factory is not dataclasses.MISSING else None)
        kwargs[key] = _coerce(value, hints[key], full,
                              default if dataclasses.is_dataclass(default) else None)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigValueError as err:
        # Name the section the value came from (FinetuneConfig is also prune.train, ...).
        raise err.within(prefix) from None
    except TypeError as err:
        raise ConfigError(f"invalid config section '{prefix or '<root>'}': {err}") from None


def _deep_set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"invalid override key {dotted!r}: expected a.b.c=value")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=c` -> ("a.b", c) with c parsed as YAML (so numbers, booleans, lists work)."""
    if "=" not in text:
        raise ConfigError(
            f"invalid --set {text!r}: expected key=value, e.g. data.max_seq_length=64")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
                ) -> PipelineConfig:
    """Defaults, then the YAML file at `path`, then `key=value` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        tree = loaded
    for text in overrides:
        key, value = parse_override(text)
        patch: dict[str, Any] = {}
        _deep_set(patch, key, value)
        tree = _merge(tree, patch)
    try:
        return _build(PipelineConfig, tree)
    except ConfigError as err:
        where = f" (in {path})" if path is not None else ""
        raise ConfigError(f"{err}{where}") from None
