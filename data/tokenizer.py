"""The one BERT WordPiece tokenizer of slimbert: tf.data, SavedModel and TFLite.

`BertTokenizer` turns raw UTF-8 strings into `[CLS] text [SEP] [PAD]...` token ids with
tensorflow_text's `FastBertTokenizer`. The same TF function runs in three places:

- the data stage (`tokenize`, inside `tf.data.Dataset.map`): unpadded ids and the
  lengths before truncation, for length statistics and the truncation rate;
- the SavedModel serving graph (`__call__`): fixed-length model inputs;
- a TFLite model that takes raw strings (`__call__` again). Packing, truncation and
  padding are built from plain tensor ops (`to_tensor`, `concat`, `where`, `range`), not
  `tensorflow_text.combine_segments`/`pad_model_inputs`, so the graph converts with
  builtin ops plus the tensorflow_text custom ops (`allow_custom_ops=True`) and needs no
  Select TF (Flex) ops, which no interpreter here can run.

Normalization follows the checkpoint: `lower_case=True` lower-cases, applies NFD and strips
accents (Hugging Face `do_lower_case=True`, uncased BERT); `lower_case=False` keeps case
and accents (cased checkpoints). Both split on whitespace, punctuation and CJK characters.
Words longer than 100 bytes become `[UNK]`. The ids equal keras-hub's `BertTokenizer`
(`strip_accents=True`) and Hugging Face BERT's on ordinary text; tensorflow_text's normalizer
differs from Hugging Face on rare input (control characters become spaces instead of being
deleted, case folding maps "ß" to "ss" and "ﬁ" to "fi", U+FFFD is kept, the word limit is
in bytes not characters, "[CLS]" typed in a text is plain text): see tests/data/test_tokenizer.py.

Example:
    >>> tok = BertTokenizer("vocab.txt", lower_case=True, max_seq_length=8)
    >>> tok(tf.constant(["Hello world!"]))["input_ids"].numpy()
    array([[ 101, 7592, 2088,  999,  102,    0,    0,    0]], dtype=int32)

Loading a SavedModel that contains this tokenizer needs `import tensorflow_text` first
(it registers the ops); a TFLite model needs the interpreter's tensorflow_text op
registerers (`tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS`).
"""

from __future__ import annotations

# `data/__init__.py` imports `core` first, which selects Keras 2 before TensorFlow loads.
import json
import os
from pathlib import Path
from typing import Any

import tensorflow as tf
import tensorflow_text as tf_text

from core.errors import ArtifactError
from data.features import INPUT_NAMES

CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
MASK_TOKEN = "[MASK]"  # not required: only training perturbations use it
SPECIAL_TOKENS = (CLS_TOKEN, SEP_TOKEN, PAD_TOKEN, UNK_TOKEN)

# A tokenizer artifact: the vocabulary and a description of how it is applied. Prepared
# data, every model artifact and every export carries these two files side by side.
VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
_REQUIRED_KEYS = ("lower_case", "max_seq_length", "vocab_size")

_TEXTS_SPEC = tf.TensorSpec([None], tf.string, name="text")


def _check_vocab(vocab: list[str], origin: str) -> None:
    if not vocab:
        raise ValueError(f"{origin}: the WordPiece vocabulary is empty (expected one token "
                         "per line, e.g. a BERT vocab.txt)")
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(f"{origin}: the WordPiece vocabulary ({len(vocab)} tokens) lacks the "
                         f"special tokens {missing}; a BERT vocabulary needs all of "
                         f"{list(SPECIAL_TOKENS)}")


def load_vocab(path: str | os.PathLike) -> list[str]:
    """Reads a WordPiece vocabulary: one token per line, UTF-8, the line number is the id.

    Args:
        path: str or PathLike. A BERT `vocab.txt` (Hugging Face) or keras-hub
            `vocabulary.txt`.

    Returns:
        The tokens in id order.

    Raises:
        ValueError: the file is missing, not UTF-8, empty, or lacks one of `[CLS]`,
            `[SEP]`, `[PAD]`, `[UNK]`.

    Example:
        >>> vocab = load_vocab("vocab.txt")
        >>> vocab[:2], len(vocab)
        (['[PAD]', '[unused0]'], 30522)
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: vocabulary file not found") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: vocabulary is not UTF-8 ({err})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read vocabulary: {err}") from None
    # Only line breaks end a token (as Hugging Face reads it): other whitespace is kept.
    vocab = [line.rstrip("\r") for line in text.split("\n")]
    if vocab and vocab[-1] == "":
        vocab.pop()  # the final newline does not start a token
    _check_vocab(vocab, str(path))
    return vocab


class BertTokenizer(tf.Module):
    """BERT WordPiece tokenizer that packs `[CLS] text [SEP]` into fixed-length ids.

    Args:
        vocab: list of str, or a path to a vocabulary file (see `load_vocab`). Must contain
            `[CLS]`, `[SEP]`, `[PAD]` and `[UNK]`.
        lower_case: bool. True for uncased checkpoints (lower-case, NFD, strip accents);
            False for cased ones (no lower-casing, no accent stripping).
        max_seq_length: int, at least 2. Length of the packed ids, `[CLS]` and `[SEP]`
            included; longer texts are truncated to their first `max_seq_length - 2`
            WordPieces.

    Attributes:
        vocab_size, cls_id, sep_id, pad_id, unk_id, max_seq_length, lower_case.

    Example:
        >>> tok = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world"],
        ...                     lower_case=True, max_seq_length=6)
        >>> tok(tf.constant(["Hello, World"]))["input_ids"].numpy()
        array([[2, 4, 1, 5, 3, 0]], dtype=int32)
        >>> ids, lengths = tok.tokenize(tf.constant(["hello " * 9]))
        >>> ids.to_list(), lengths.numpy()
        ([[2, 4, 4, 4, 4, 3]], array([11], dtype=int32))
    """

    def __init__(self, vocab: list[str] | str | os.PathLike, *, lower_case: bool,
                 max_seq_length: int) -> None:
        super().__init__(name="bert_tokenizer")
        if isinstance(vocab, (str, os.PathLike)):
            vocab = load_vocab(vocab)
        else:
            vocab = list(vocab)
            _check_vocab(vocab, "BertTokenizer(vocab=...)")
        if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) \
                or max_seq_length < 2:
            raise ValueError(f"max_seq_length must be an int >= 2 (room for [CLS] and [SEP]), "
                             f"got {max_seq_length!r}")
        index = {}
        for i, token in enumerate(vocab):
            index.setdefault(token, i)
        self.vocab_size = len(vocab)
        self.cls_id = index[CLS_TOKEN]
        self.sep_id = index[SEP_TOKEN]
        self.pad_id = index[PAD_TOKEN]
        self.unk_id = index[UNK_TOKEN]
        self.max_seq_length = max_seq_length
        self.lower_case = bool(lower_case)
        self._wordpiece = tf_text.FastBertTokenizer(
            vocab=vocab,
            token_out_type=tf.int32,
            unknown_token=UNK_TOKEN,
            lower_case_nfd_strip_accents=self.lower_case,
        )

    def _pack(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Dense `[CLS] content [SEP] [PAD]...` ids, packed lengths, lengths before truncation.

        Only plain tensor ops after the WordPiece step, so that TFLite needs no Flex ops.
        """
        max_seq_length = self.max_seq_length
        wordpieces = self._wordpiece.tokenize(texts)  # int32 [B, (tokens)]
        full = tf.cast(wordpieces.row_lengths(), tf.int32)
        content_len = tf.minimum(full, max_seq_length - 2)
        # to_tensor with a fixed width truncates and pads in one op.
        content = wordpieces.to_tensor(default_value=self.pad_id, shape=[None, max_seq_length - 2])
        batch = tf.shape(content)[0]
        cls = tf.fill([batch, 1], tf.constant(self.cls_id, tf.int32))
        pad = tf.fill([batch, 1], tf.constant(self.pad_id, tf.int32))
        ids = tf.concat([cls, content, pad], axis=1)  # [B, max_seq_length]
        positions = tf.range(max_seq_length, dtype=tf.int32)[tf.newaxis, :]
        ids = tf.where(positions == content_len[:, tf.newaxis] + 1,
                       tf.constant(self.sep_id, tf.int32), ids)
        return ids, content_len + 2, full + 2

    @tf.function(input_signature=[_TEXTS_SPEC])
    def __call__(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """Tokenizes and packs a batch of texts into fixed-length BERT inputs.

        Args:
            texts: string Tensor of shape [B] (raw UTF-8 text).

        Returns:
            dict of int32 Tensors of shape [B, max_seq_length]: `input_ids`
            (`[CLS] text [SEP]` then `[PAD]`), `input_mask` (1 on real tokens, 0 on
            padding) and `segment_ids` (all 0: one segment).

        Example:
            >>> tok(tf.constant(["a good film", ""]))["input_mask"].numpy().sum(axis=1)
            array([5, 2], dtype=int32)
        """
        ids, length, _ = self._pack(texts)
        positions = tf.range(self.max_seq_length, dtype=tf.int32)[tf.newaxis, :]
        mask = tf.cast(positions < length[:, tf.newaxis], tf.int32)
        return dict(zip(INPUT_NAMES, (ids, mask, tf.zeros_like(ids))))

    @tf.function(input_signature=[_TEXTS_SPEC])
    def tokenize(self, texts: tf.Tensor) -> tuple[tf.RaggedTensor, tf.Tensor]:
        """Unpadded `[CLS] text [SEP]` ids and the lengths before truncation.

        Args:
            texts: string Tensor of shape [B] (raw UTF-8 text).

        Returns:
            A pair: int32 RaggedTensor [B, (tokens)] of `[CLS] text [SEP]` truncated to
            `max_seq_length` (equal to `__call__`'s ids without the padding), and int32
            Tensor [B] of the lengths before truncation, `[CLS]` and `[SEP]` included.

        Example:
            >>> ds = tf.data.Dataset.from_tensor_slices(["a good film"]).batch(32)
            >>> ids, lengths = next(iter(ds.map(tok.tokenize)))
        """
        ids, length, full = self._pack(texts)
        return tf.RaggedTensor.from_tensor(ids, lengths=length), full

    # --- the tokenizer artifact (vocab.txt + tokenizer.json) ---

    def describe(self, origin: str = "") -> dict[str, Any]:
        """What `tokenizer.json` records: casing, length, vocabulary size, special ids."""
        return {"lower_case": self.lower_case, "max_seq_length": self.max_seq_length,
                "vocab_size": self.vocab_size, "cls_id": self.cls_id, "sep_id": self.sep_id,
                "pad_id": self.pad_id, "unk_id": self.unk_id, "vocab_origin": origin}

    def save(self, folder: str | os.PathLike, vocab: list[str] | tuple[str, ...],
             origin: str = "") -> dict[str, Any]:
        """Writes `vocab.txt` (the tokens this tokenizer was built from) and
        `tokenizer.json` into `folder`; returns what `tokenizer.json` holds."""
        if len(vocab) != self.vocab_size:
            raise ValueError(f"vocab has {len(vocab)} tokens, the tokenizer {self.vocab_size}")
        folder = Path(folder)
        (folder / VOCAB_FILE).write_text("".join(f"{t}\n" for t in vocab), encoding="utf-8")
        info = self.describe(origin)
        (folder / TOKENIZER_FILE).write_text(json.dumps(info, indent=2) + "\n",
                                             encoding="utf-8")
        return info

    @classmethod
    def load(cls, folder: str | os.PathLike, max_seq_length: int | None = None
             ) -> BertTokenizer:
        """The tokenizer saved in `folder` (by `save`); `max_seq_length` overrides the
        saved length (e.g. a TFLite model's fixed input width).

        Example:
            >>> tok = BertTokenizer.load("runs/default/prepare")
            >>> tok.max_seq_length
            128
        """
        info = read_tokenizer_config(folder)
        return cls(Path(folder) / VOCAB_FILE, lower_case=info["lower_case"],
                   max_seq_length=max_seq_length or info["max_seq_length"])


def read_tokenizer_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The `tokenizer.json` of a tokenizer artifact: the one reader of that file.

    Returns:
        dict with `lower_case`, `max_seq_length`, `vocab_size`, the special token ids
        and `vocab_origin`.

    Raises:
        ArtifactError: the file is missing, not JSON, or lacks a required key.
    """
    path = Path(folder) / TOKENIZER_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: the folder holds no tokenizer "
                            "(rerun the stage that wrote it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} cannot be read: {err}") from None
    missing = [key for key in _REQUIRED_KEYS if not isinstance(info, dict) or key not in info]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    return info
