"""The base of every config dataclass, and the canonical hash of a config.

Each library keeps its own frozen config dataclass beside the code that reads it
(`data.config.DataConfig`, `models.config.ModelConfig`, ...); `pipeline.config` nests
them into the pipeline's config and loads YAML and `--set` overrides into it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, ClassVar

from core.errors import ConfigValueError


def check(condition: bool, key: str, message: str) -> None:
    """Raise ConfigValueError for `key`, relative to the section being checked."""
    if not condition:
        raise ConfigValueError(key, message)


class Section:
    """A config section: `validate()` checks its values with keys relative to it; errors
    name the section (`SECTION`, or where the loader found it: `prune.train`, ...)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        try:
            self.validate()
        except ConfigValueError as err:
            raise err.within(self.SECTION) from None

    def validate(self) -> None:
        pass


def plain(value: Any) -> Any:
    """Dataclasses to dicts and tuples to lists, recursively, so YAML and JSON round-trip."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def config_hash(data: Any) -> str:
    """sha256 of the canonical JSON form of `data` (a config or a part of one)."""
    text = json.dumps(plain(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
