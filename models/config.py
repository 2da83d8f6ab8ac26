"""Configuration of the BERT checkpoint and architecture (`model.*` keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.config import Section, check


@dataclass(frozen=True)
class ModelConfig(Section):
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
        check(bool(self.checkpoint), "checkpoint", "must not be empty")
        check(self.pooling in ("cls", "mean"), "pooling",
              f"expected cls or mean, found {self.pooling!r}")
        check(0.0 <= self.dropout < 1.0, "dropout", "expected 0 <= dropout < 1")
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_positions", "type_vocab_size"):
            check(getattr(self, key) > 0, key, "must be positive")
        check(self.hidden_size % self.num_heads == 0, "num_heads",
              f"hidden_size {self.hidden_size} is not divisible by {self.num_heads} heads")
