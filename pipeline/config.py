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
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from core.config import Section, check, config_hash, plain
from core.errors import ArtifactError, ConfigError, ConfigValueError, SlimbertError
from data.config import DATA_SOURCES, FILE_FORMATS, SPLITS, DataConfig
from export.targets import (
    EXPORT_TARGETS,
    POST_TRAINING_VARIANTS,
    QAT_TARGETS,
    RENAMED_VARIANTS,
    SAVEDMODEL_TARGETS,
)
from models.config import ModelConfig
from models.distill_config import VOCABULARIES, DistillConfig
from models.pruning_config import PRUNE_ALLOCATIONS, PRUNE_SCHEDULES, PruneConfig
from models.training_config import PRECISIONS, STRATEGIES, TrainConfig

__all__ = [  # defined in the libraries, composed here
    "ArtifactError", "ConfigError", "ConfigValueError", "SlimbertError", "Section", "check",
    "config_hash", "plain", "DATA_SOURCES", "FILE_FORMATS", "SPLITS", "DataConfig",
    "EXPORT_TARGETS", "ModelConfig", "PRUNE_ALLOCATIONS", "PRUNE_SCHEDULES", "PruneConfig",
    "PRECISIONS", "STRATEGIES", "TrainConfig", "DistillConfig", "VOCABULARIES",
]


# === Stage configs ===


@dataclass(frozen=True)
class EvaluateConfig(Section):
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
        check(self.split in SPLITS, "split", f"expected one of {', '.join(SPLITS)}")
        for key in ("min_accuracy", "min_macro_f1"):
            check(0 <= getattr(self, key) <= 1, key, "expected 0..1")


QUANTIZE_SOURCES = ("finetune", "prune", "distill")


@dataclass(frozen=True)
class QuantizeConfig(Section):
    """Quantization (stage `quantize`): QAT with tfmot and post-training TFLite variants.

    Attributes:
        sources: the artifacts to quantize: `finetune` (the float model), `prune`
            (the sparse model; its QAT keeps every pruned zero) and/or `distill` (the
            student).
        post_training: TFLite variants converted from each source without training,
            named like the export targets they become: `float32` (reference; not
            converted by default), `cpu`
            (dynamic-range: int8 weights, float activations), `gpu` (float16 weights),
            `int8` (post-training int8: the graph QAT would train, with its
            activation ranges calibrated on `calibration_batches` and never trained;
            every matmul int8, LayerNorm, residual adds and softmax float).
        qat: run quantization-aware training on each source and convert it to an int8
            TFLite model (variant `qat`; from a pruned source: prune-preserving QAT).
        representative_examples: training examples that calibrate the ranges the
            quantized Keras model leaves to the TFLite converter.
        calibration_batches: training batches that set the quantized model's
            activation ranges (the `int8` variant's and QAT's start; 0 = tfmot's
            [-6, 6]).
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
    # Left out by default to keep `make run` short (each costs a conversion and test runs
    # per source): `float32` (its accuracy is the Keras float model's) and `int8` (the
    # calibrated graph QAT starts from; `qat` is the int8 deliverable).
    post_training: tuple[str, ...] = ("cpu", "gpu")
    qat: bool = True
    representative_examples: int = 256
    calibration_batches: int = 8
    per_channel: bool = True
    outlier_ratio: float = 4.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, learning_rate=1e-5, warmup_fraction=0.1))

    def validate(self) -> None:
        check(len(self.sources) > 0 and len(set(self.sources)) == len(self.sources)
              and all(s in QUANTIZE_SOURCES for s in self.sources), "sources",
              f"expected distinct names from {', '.join(QUANTIZE_SOURCES)}, "
              f"found {list(self.sources)}")
        for old, new in RENAMED_VARIANTS.items():
            check(old not in self.post_training, "post_training",
                  f"{old!r} is now called {new!r} (TFLite variants carry the names of "
                  f"the export targets: {', '.join(POST_TRAINING_VARIANTS)})")
        check(all(k in POST_TRAINING_VARIANTS for k in self.post_training)
              and len(set(self.post_training)) == len(self.post_training),
              "post_training",
              f"expected distinct names from {', '.join(POST_TRAINING_VARIANTS)}, "
              f"found {list(self.post_training)}")
        check(self.qat or self.post_training, "post_training",
              "nothing to do: empty and quantize.qat is false")
        check(self.representative_examples > 0, "representative_examples",
              "must be positive")
        check(self.calibration_batches >= 0, "calibration_batches", "must be >= 0")
        check(self.calibration_batches > 0 or "int8" not in self.post_training,
              "calibration_batches", "must be > 0 for the `int8` variant, whose ranges "
              "come from calibration alone (or drop int8 from quantize.post_training)")
        check(self.outlier_ratio == 0 or self.outlier_ratio > 1, "outlier_ratio",
              f"must be 0 (off) or above 1, found {self.outlier_ratio!r}")
        check(self.outlier_ratio == 0 or self.calibration_batches > 0, "outlier_ratio",
              "needs quantize.calibration_batches > 0 to find the outlier channels "
              "(or set quantize.outlier_ratio: 0)")
        # tfmot's fake-quant ops and range variables are float32.
        check(self.train.precision == "float32", "train.precision",
              f"quantization-aware training runs in float32 only, found "
              f"{self.train.precision!r}")


EXPORT_MODELS = ("finetune", "prune", "distill")


@dataclass(frozen=True)
class ExportConfig(Section):
    """Deliverables (stage `export`) and their verification gate.

    Attributes:
        model: the Keras model behind the SavedModel and the `cpu`, `gpu`, `int8` and
            `text` TFLite models: `finetune` (float), `prune` (sparse) or `distill`
            (the student).
        name: model name (TF Serving folder `saved_model/<name>/<version>`, TFLite files
            `<name>-<target>.tflite`).
        version: TF Serving version number.
        targets: what to export: `savedmodel` (raw strings in, TF Serving layout),
            `savedmodel-ids` (token ids in, core TensorFlow ops only: for TF Serving
            builds whose TF Text differs from ours), `cpu` (dynamic-range int8
            TFLite), `gpu` (float16 TFLite), `int8` (full integer TFLite), `qat` and
            `pruned-qat` (the quantize stage's QAT int8 models of the float and pruned
            model), `student-cpu`, `student-gpu`, `student-int8`, `student-qat` (the
            distilled student's TFLite variants from the quantize stage), `text`
            (raw-string TFLite with the tokenizer as TF Text ops).
        max_accuracy_drop: the gate: an export's test accuracy must be within this of
            the model it came from (the int8-activation targets `int8`, `qat`,
            `pruned-qat`: at most this below their Keras twin, the calibrated or QAT
            model) ...
        min_agreement: ... and a float or dynamic-range target must agree with that
            model's predicted labels on at least this fraction of the examples.
        max_drop_from_float: an int8-activation target's accuracy must also be at most
            this far below the float model it was quantized from (`export.model` for
            `int8`, the fine-tuned model for `qat`, the pruned one for `pruned-qat`) ...
        min_int8_agreement: ... and agree with its twin on at least this fraction: a
            floor that catches a broken conversion (int8 kernels round differently, so
            `min_agreement` would fail models that are as accurate as their twin).
        warmup_requests: write TF Serving warm-up requests into the SavedModel.
        compare_kernels: TFLite targets that also run on the runtime's builtin kernels
            (without its XNNPACK delegate), their accuracy and agreement recorded there;
            not part of the gate. The default: the int8-activation targets, whose
            predictions depend on the kernels' rounding (the float and hybrid ones only
            take longer there: 3 min for `cpu` on the default model).
        mediapipe: write the TFLite model metadata MediaPipe Tasks' TextClassifier
            needs (tokenizer, vocabulary, labels) into every token-id TFLite target, and
            verify each file in that TextClassifier on the test split, gated like the
            runtime adapter (needs `.venv-mediapipe`, which `make setup` creates).
    """

    SECTION: ClassVar[str] = "export"

    model: str = "finetune"
    name: str = "slimbert"
    version: int = 1
    targets: tuple[str, ...] = EXPORT_TARGETS
    max_accuracy_drop: float = 0.005
    min_agreement: float = 0.99
    max_drop_from_float: float = 0.01
    min_int8_agreement: float = 0.95
    warmup_requests: bool = True
    compare_kernels: tuple[str, ...] = ("int8", "qat", "pruned-qat")
    mediapipe: bool = True

    def validate(self) -> None:
        check(self.model in EXPORT_MODELS, "model",
              f"expected one of {', '.join(EXPORT_MODELS)}, found {self.model!r}")
        check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) is not None,
              "name", f"expected letters, digits, '_', '.', '-', found {self.name!r}")
        check(self.version > 0, "version", "must be positive")
        check(len(self.targets) > 0 and len(set(self.targets)) == len(self.targets)
              and all(t in EXPORT_TARGETS for t in self.targets), "targets",
              f"expected distinct names from {', '.join(EXPORT_TARGETS)}, "
              f"found {list(self.targets)}")
        check(all(t in EXPORT_TARGETS and t not in SAVEDMODEL_TARGETS
                  for t in self.compare_kernels),
              "compare_kernels", f"expected TFLite target names, found "
              f"{list(self.compare_kernels)}")
        check(0 <= self.max_accuracy_drop <= 1, "max_accuracy_drop", "expected 0..1")
        check(0 <= self.min_agreement <= 1, "min_agreement", "expected 0..1")
        check(0 <= self.max_drop_from_float <= 1, "max_drop_from_float", "expected 0..1")
        check(0 <= self.min_int8_agreement <= 1, "min_int8_agreement", "expected 0..1")


@dataclass(frozen=True)
class ReportConfig(Section):
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
            check(getattr(self, key) > 0, key, "must be positive")
        for key in ("warmup", "throughput_runs"):
            check(getattr(self, key) >= 0, key, "must be >= 0")
        check(len(self.threads) > 0 and all(t >= 0 for t in self.threads)
              and len(set(self.threads)) == len(self.threads), "threads",
              f"expected distinct counts >= 0 (0 = all cores), found {list(self.threads)}")


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline: a seed and one section per stage."""

    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        for key in ("augment_fraction", "distill_weight", "distill_hidden_weight"):
            if getattr(self.finetune, key) > 0:
                raise ConfigError(f"invalid config value for 'finetune.{key}': "
                                  "fine-tuning has no teacher; distillation is for "
                                  "prune.train and quantize.train")
        if self.model.checkpoint == "random" and \
                self.data.max_seq_length > self.model.max_positions:
            # A real checkpoint's positions are known once it is read (prepare checks).
            raise ConfigError(
                f"invalid config value for 'data.max_seq_length': "
                f"{self.data.max_seq_length} exceeds model.max_positions "
                f"{self.model.max_positions}")
        if not self.distill.enabled:  # the knob that skips the stage drops its student
            sources = tuple(s for s in self.quantize.sources if s != "distill")
            targets = tuple(t for t in self.export.targets if not t.startswith("student-"))
            for key, left in (("quantize.sources", sources), ("export.targets", targets)):
                if not left:
                    raise ConfigError(f"invalid config value for '{key}': only the "
                                      "student's, and distill.enabled is false")
            if self.export.model == "distill":
                raise ConfigError("invalid config value for 'export.model': 'distill' "
                                  "needs distill.enabled true")
            object.__setattr__(self, "quantize",
                               dataclasses.replace(self.quantize, sources=sources))
            object.__setattr__(self, "export",
                               dataclasses.replace(self.export, targets=targets))
        for target, source in QAT_TARGETS.items():
            if target in self.export.targets and not (
                    self.quantize.qat and source in self.quantize.sources):
                raise ConfigError(
                    f"invalid config value for 'export.targets': {target!r} needs "
                    f"quantize.qat true and {source!r} in quantize.sources (or drop "
                    f"{target!r} from export.targets)")

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# === Loading ===


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
        # Name the section the value came from (TrainConfig is also prune.train, ...).
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
        if path.is_dir():
            raise ConfigError(f"--config {path} is a folder; give a YAML file, e.g. "
                              f"{path / 'default.yaml'}")
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
    from_file = tree
    keys = []
    for text in overrides:
        key, value = parse_override(text)
        keys.append((key, text))
        patch: dict[str, Any] = {}
        _deep_set(patch, key, value)
        tree = _merge(tree, patch)
    try:
        return _build(PipelineConfig, tree)
    except ConfigError as err:
        raise ConfigError(f"{err}{_blame(err, from_file, path, keys)}") from None


def _blame(err: ConfigError, from_file: dict[str, Any], path: Path | None,
           override_keys: list[tuple[str, str]]) -> str:
    """Where the value that `err` rejects came from: the YAML file, or a --set
    (`override_keys`: each override's key and its text as given)."""
    named = [text for key, text in override_keys if f"'{key}'" in str(err)]
    if named:
        return f" (from --set {named[-1]})"
    if override_keys:
        try:
            _build(PipelineConfig, from_file)
        except ConfigError as file_err:
            if str(file_err) == str(err) and path is not None:
                return f" (in {path})"
        else:
            return " (from --set)"
    return f" (in {path})" if path is not None else ""
