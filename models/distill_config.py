"""Configuration of the distilled student (`distill.*` keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.config import Section, check
from models.training_config import TrainConfig

VOCABULARIES = ("all", "train")


@dataclass(frozen=True)
class DistillConfig(Section):
    """A smaller student cut out of the fine-tuned model and trained from it (stage
    `distill`, `models.shape_pruning`). The defaults are the best shape measured on the
    default task (docs/distillation.md): every layer, 4 heads, 384 FFN neurons.

    Attributes:
        enabled: run the stage in `slimbert run`; false skips it, and the quantize and
            export stages then leave out the student (`distill` in `quantize.sources`,
            the `student-*` targets).
        num_layers: transformer layers the student keeps, evenly spaced over the
            teacher's and always including its last (6 -> 3 keeps 1, 3, 5); 0 = all.
        keep_layers: the teacher layers to keep, by index (overrides num_layers).
        num_heads: attention heads kept in every layer, those with the highest Taylor
            importance on training batches; each keeps its width; 0 = all.
        intermediate_size: FFN neurons kept in every layer, by the same score; 0 = all.
        vocabulary: `train` keeps the embedding rows of the token ids that occur in the
            training split at least `min_token_count` times, plus every special token;
            `all` keeps the whole table. Tokenization never changes: the student maps
            the teacher's ids to its rows, removed ids to the [UNK] row.
        min_token_count: with `train`, occurrences a token needs to keep its row.
        extra_tokens: with `train`, also keep this many more rows: the lowest ids not yet
            kept (BERT's WordPiece vocabularies list whole words roughly by corpus
            frequency after the special and single-character entries).
        importance_batches: training batches the head and neuron scores are summed over.
        train: the distillation fine-tune (same keys as `finetune`); `distill_weight`
            is the share of the loss from the teacher's soft labels, `augment_fraction`
            adds perturbed copies learned from the teacher alone, `distill_hidden_weight`
            matches every student layer's hidden state with the teacher layer it was
            cut from.
    """

    SECTION: ClassVar[str] = "distill"

    enabled: bool = True
    num_layers: int = 0
    keep_layers: tuple[int, ...] = ()
    num_heads: int = 4
    intermediate_size: int = 384
    vocabulary: str = "train"
    min_token_count: int = 1
    extra_tokens: int = 0
    importance_batches: int = 16
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=4, learning_rate=1e-4, warmup_fraction=0.1, distill_weight=1.0,
        distill_temperature=2.0, distill_hidden_weight=1.0, augment_fraction=0.5))

    def validate(self) -> None:
        for key in ("num_layers", "num_heads", "intermediate_size", "extra_tokens"):
            check(getattr(self, key) >= 0, key, "must be >= 0 (0 = keep all)"
                  if key != "extra_tokens" else "must be >= 0")
        check(all(i >= 0 for i in self.keep_layers)
              and len(set(self.keep_layers)) == len(self.keep_layers), "keep_layers",
              f"expected distinct layer indices >= 0, found {list(self.keep_layers)}")
        check(self.vocabulary in VOCABULARIES, "vocabulary",
              f"expected one of {', '.join(VOCABULARIES)}, found {self.vocabulary!r}")
        check(self.min_token_count > 0, "min_token_count", "must be positive")
        check(self.importance_batches > 0, "importance_batches", "must be positive")
        check(self.train.distills, "train.distill_weight",
              "the student learns from the teacher: set distill_weight or "
              "distill_hidden_weight > 0")
