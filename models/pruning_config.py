"""Configuration of magnitude pruning (`prune.*` keys)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from core.config import Section, check
from core.errors import ConfigValueError
from models.training_config import TrainConfig

PRUNE_SCHEDULES = ("polynomial", "constant")
PRUNE_ALLOCATIONS = ("uniform", "global")


@dataclass(frozen=True)
class PruneConfig(Section):
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
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=3, learning_rate=5e-5, warmup_fraction=0.0))

    def validate(self) -> None:
        check(self.schedule in PRUNE_SCHEDULES, "schedule",
              f"expected one of {', '.join(PRUNE_SCHEDULES)}, found {self.schedule!r}")
        check(self.allocation in PRUNE_ALLOCATIONS, "allocation",
              f"expected one of {', '.join(PRUNE_ALLOCATIONS)}, found {self.allocation!r}")
        check(0 < self.max_layer_sparsity < 1 and (
            self.allocation == "uniform" or self.max_layer_sparsity >= self.final_sparsity),
            "max_layer_sparsity", "expected (0, 1) and, with allocation 'global', at "
            f"least final_sparsity; found {self.max_layer_sparsity}")
        check(self.allocation == "uniform" or not self.m_by_n, "allocation",
              "m_by_n sparsity is the same in every layer: use allocation 'uniform'")
        check(0 <= self.initial_sparsity < 1, "initial_sparsity", "expected [0, 1)")
        check(0 < self.final_sparsity < 1, "final_sparsity", "expected (0, 1)")
        check(self.initial_sparsity <= self.final_sparsity, "initial_sparsity",
              "must not exceed final_sparsity")
        check(self.begin_step >= 0 and self.end_step >= 0, "begin_step",
              "steps must be >= 0")
        check(self.end_step == 0 or self.end_step > self.begin_step, "end_step",
              "must come after begin_step")
        # The pruned model is the fine-tuned float32 model wrapped by tfmot: a mixed
        # policy would not reach its layers and would be ignored.
        check(self.train.precision == "float32", "train.precision",
              f"pruning trains in float32 only, found {self.train.precision!r}")
        check(0 < self.end_fraction <= 1, "end_fraction", "expected (0, 1]")
        check(self.frequency > 0, "frequency", "must be positive")
        pair = list(self.m_by_n)
        check(not pair or (len(pair) == 2 and 0 < pair[0] < pair[1]), "m_by_n",
              f"expected [] or [M, N] with 0 < M < N (e.g. [2, 4]), found {pair}")
        for key in ("include", "exclude"):
            for pattern in getattr(self, key):
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ConfigValueError(key, f"{pattern!r} is not a regular "
                                           f"expression ({err})") from None
