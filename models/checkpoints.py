"""Pretrained checkpoints: where they are and what tokenizer they come with.

`model.checkpoint` is one of:
    builtin                 all-MiniLM-L6-v2, installed offline by `make setup`
    random                  random init (vocabulary from `model.vocab`, else the built-in one)
    <folder>                a Hugging Face BERT folder (config.json, model.safetensors, vocab.txt)
    keras_hub:<preset>      a keras-hub preset name or a local preset folder

Example:
    >>> from pipeline.config import ModelConfig
    >>> spec = tokenizer_spec(ModelConfig())
    >>> len(spec.vocab), spec.lower_case
    (30522, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline import assets
from pipeline.config import ModelConfig, SlimbertError

from data.tokenizer import load_vocab

KERAS_HUB_PREFIX = "keras_hub:"


class CheckpointError(SlimbertError):
    """A checkpoint that is missing, incomplete or not a BERT checkpoint."""


@dataclass(frozen=True)
class TokenizerSpec:
    """The WordPiece vocabulary and casing a checkpoint was trained with."""

    vocab: tuple[str, ...]
    lower_case: bool
    origin: str


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read JSON: {err}") from None


def checkpoint_dir(cfg: ModelConfig) -> Path | None:
    """Local folder of the configured checkpoint (None for `random` and hub preset names)."""
    if cfg.checkpoint == "builtin":
        return assets.minilm_dir()
    if cfg.checkpoint == "random":
        return None
    if cfg.checkpoint.startswith(KERAS_HUB_PREFIX):
        folder = Path(cfg.checkpoint[len(KERAS_HUB_PREFIX):]).expanduser()
        return folder if folder.is_dir() else None
    folder = Path(cfg.checkpoint).expanduser()
    if not folder.is_dir():
        raise CheckpointError(
            f"model.checkpoint {cfg.checkpoint!r} is neither 'builtin', 'random', "
            "'keras_hub:<preset>' nor an existing Hugging Face BERT folder")
    return folder


def _hf_tokenizer(folder: Path, cfg: ModelConfig) -> TokenizerSpec:
    vocab_path = folder / "vocab.txt"
    if not vocab_path.is_file():
        raise CheckpointError(f"{folder} has no vocab.txt: not a Hugging Face BERT folder")
    lower = cfg.lower_case
    if lower is None:
        tok_cfg = folder / "tokenizer_config.json"
        # Hugging Face's BertTokenizer lower-cases unless told otherwise.
        lower = bool(_read_json(tok_cfg).get("do_lower_case", True)) if tok_cfg.is_file() \
            else True
    return TokenizerSpec(tuple(load_vocab(vocab_path)), lower, str(vocab_path))


def _keras_hub_tokenizer(cfg: ModelConfig) -> TokenizerSpec:
    name = cfg.checkpoint[len(KERAS_HUB_PREFIX):]
    folder = Path(name).expanduser()
    if folder.is_dir():
        vocab_path = folder / "assets" / "tokenizer" / "vocabulary.txt"
        tok_json = folder / "tokenizer.json"
        if not vocab_path.is_file() or not tok_json.is_file():
            raise CheckpointError(f"{folder} is not a keras-hub BERT preset folder "
                                  "(expected tokenizer.json and assets/tokenizer/vocabulary.txt)")
        lower = cfg.lower_case
        if lower is None:
            lower = bool(_read_json(tok_json).get("config", {}).get("lowercase", True))
        return TokenizerSpec(tuple(load_vocab(vocab_path)), lower, str(vocab_path))
    try:
        import keras_hub

        tokenizer = keras_hub.models.BertTokenizer.from_preset(name)
    except Exception as err:  # keras-hub raises many kinds when offline or unknown
        raise CheckpointError(
            f"cannot load keras-hub preset {name!r}: {type(err).__name__}: {err}. Without a "
            "network, pass a local preset folder (keras_hub:/path/to/preset)") from None
    lower = tokenizer.lowercase if cfg.lower_case is None else cfg.lower_case
    return TokenizerSpec(tuple(tokenizer.get_vocabulary()), bool(lower), f"keras_hub:{name}")


def tokenizer_spec(cfg: ModelConfig) -> TokenizerSpec:
    """Vocabulary and casing for the configured checkpoint."""
    if cfg.checkpoint == "random":
        vocab_path = Path(cfg.vocab).expanduser() if cfg.vocab else \
            assets.minilm_dir() / "vocab.txt"
        lower = True if cfg.lower_case is None else cfg.lower_case
        return TokenizerSpec(tuple(load_vocab(vocab_path)), lower, str(vocab_path))
    if cfg.checkpoint.startswith(KERAS_HUB_PREFIX):
        return _keras_hub_tokenizer(cfg)
    return _hf_tokenizer(checkpoint_dir(cfg), cfg)
