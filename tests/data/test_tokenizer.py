"""data/tokenizer.py: parity with keras-hub and Hugging Face, packing, tf.data, TFLite.

References: keras-hub's `BertTokenizer(lowercase=True, strip_accents=True)` (the brief's
reference) and the checkpoint's own Hugging Face fast tokenizer (`tokenizer.json`), which is
what all-MiniLM-L6-v2 was trained with. Our ids equal keras-hub's on every text in `TEXTS`.
Where the three disagree, the cases are pinned below (`KERAS_HUB_DIFFERS`,
`HUGGING_FACE_DIFFERS`) with the reason, so a change in any of them shows up here.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as tf_text

from core.errors import ArtifactError
from data.tokenizer import BertTokenizer, load_vocab, read_tokenizer_config

CLS, SEP, PAD = 101, 102, 0  # ids in the all-MiniLM-L6-v2 (bert-base-uncased) vocabulary
LENGTHS = (16, 128)

TEXTS = [
    "café naïve Ångström ÉCOLE résumé",
    "Wow!!! ... ?!? --- (yes) [no] {maybe} <tag> #1 @user $5 50% a&b ~x^y",
    "don't won't it's 'single' \"double\" “smart quotes” ‘curly’ «guillemets»",
    "日本語のテキスト 中文 漢字混じりtext",
    "👍🏽🎬 great movie 😀",
    "مرحبا بالعالم Привет мир Ελληνικά",
    "tabs\tand\nnewlines\r\nand\rreturns\t\t",
    "many     spaces    between   words",
    "call 555-1234 at 3.14pm, see https://example.com/a?b=1&c=2 or mail me@example.org",
    "",
    "   \t\n  ",
    "a fairly long review that keeps going and going " * 30,
    "x" * 150,  # one 150-byte word: [UNK]
    "supercalifragilisticexpialidocious" * 2,  # 68 bytes: split into WordPieces
    "MiXeD CaSe TeXt, ALL CAPS and lower",
    "The film's 2nd half (2h 15min) was... meh?!",
]

# keras-hub is wrong here and we match Hugging Face (asserted in
# `test_keras_hub_differences_match_hugging_face`):
# - Unicode spaces (no-break, thin, ideographic, line separator): keras-hub's RE2 `\s` is ASCII
#   only, so it glues them into the word and gets [UNK].
# - Format characters (zero-width space/joiner, soft hyphen, BOM): Hugging Face deletes them,
#   keras-hub splits on them.
# - Hangul: keras-hub's case folding (NFKC) recomposes the NFD jamo into syllables that are
#   not in the vocabulary ([UNK]); BERT keeps the jamo.
KERAS_HUB_DIFFERS = [
    "no\u00a0break thin\u2009space",
    "\u3000ideographic space",
    "line\u2028separator",
    "zero\u200bwidth emoji\u200dzwj soft\u00adhyphen BOM\ufeffhere",
    "한국어 텍스트",
]

# tensorflow_text (and so keras-hub) differs from Hugging Face here, by design of its
# normalizer; we cannot change it without Select TF ops (a regex before the tokenizer would
# not convert to TFLite builtins). Pinned as (text, our tokens, Hugging Face tokens).
HUGGING_FACE_DIFFERS = [
    # Control characters other than \t\n\r (also \f, \v): tf_text turns them into spaces,
    # BERT deletes them.
    ("a\x00b\x07c\x1bd\x0ce", ["a", "b", "c", "d", "e"], ["abc", "##de"]),
    # tf_text lower-cases by Unicode case folding (NFKC_Casefold); BERT uses str.lower().
    ("straße", ["st", "##ras", "##se"], ["st", "##raße"]),
    ("ﬁne ｆｕｌｌ ①", ["fine", "full", "1"], ["ﬁ", "##ne", "[UNK]", "[UNK]"]),
    # BERT deletes U+FFFD; tf_text keeps it and the word becomes [UNK].
    ("x\ufffdy", ["[UNK]"], ["x", "##y"]),
    # Long words: tf_text's limit is 100 bytes, BERT's 100 characters (60 Cyrillic = 120 bytes).
    ("я" * 60, ["[UNK]"], ["я"] + ["##я"] * 59),
    # Special tokens typed in the text are text to us (as in keras-hub), specials to HF.
    ("[CLS] hi", ["[", "cl", "##s", "]", "hi"], ["[CLS]", "hi"]),
]


def pack(ids: list[int], max_seq_length: int, cls: int = CLS, sep: int = SEP,
         pad: int = PAD) -> list[int]:
    """[CLS] ids [SEP] [PAD]..., content truncated to max_seq_length - 2."""
    row = [cls] + list(ids)[: max_seq_length - 2] + [sep]
    return row + [pad] * (max_seq_length - len(row))


def as_lists(ids) -> list[list[int]]:
    if hasattr(ids, "to_list"):
        ids = ids.to_list()
    return [[int(i) for i in row] for row in ids]


@pytest.fixture(scope="module")
def vocab(minilm_vocab_path) -> list[str]:
    return load_vocab(minilm_vocab_path)


@pytest.fixture(scope="module")
def tokenizers_by_length(vocab) -> dict[int, BertTokenizer]:
    return {n: BertTokenizer(vocab, lower_case=True, max_seq_length=n) for n in LENGTHS}


@pytest.fixture(scope="module")
def keras_hub_ids(minilm_vocab_path):
    """Unpacked keras-hub ids for a list of texts."""
    import keras_hub

    tokenizer = keras_hub.tokenizers.BertTokenizer(
        vocabulary=str(minilm_vocab_path), lowercase=True, strip_accents=True)
    return lambda texts: as_lists(tokenizer(tf.constant(texts)))


@pytest.fixture(scope="module")
def hugging_face(minilm_dir):
    """The checkpoint's own Hugging Face fast tokenizer, no padding or truncation."""
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def our_ids(tokenizer: BertTokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(tf.constant(texts, tf.string))["input_ids"].numpy().tolist()


def our_tokens(tokenizer: BertTokenizer, vocab: list[str], text: str) -> list[str]:
    ids, _ = tokenizer.tokenize(tf.constant([text]))
    return [vocab[i] for i in ids.to_list()[0][1:-1]]


# === Parity ===


@pytest.mark.parametrize("max_seq_length", LENGTHS)
def test_matches_keras_hub(tokenizers_by_length, keras_hub_ids, max_seq_length):
    expected = [pack(row, max_seq_length) for row in keras_hub_ids(TEXTS)]
    got = our_ids(tokenizers_by_length[max_seq_length], TEXTS)
    for text, want, have in zip(TEXTS, expected, got):
        assert have == want, f"{text[:40]!r}"
    # The list really exercises truncation at both lengths and [UNK].
    assert max(len(row) for row in keras_hub_ids(TEXTS)) > 128 - 2
    assert any(100 in row for row in got)


@pytest.mark.parametrize("max_seq_length", LENGTHS)
def test_matches_hugging_face(tokenizers_by_length, hugging_face, max_seq_length):
    texts = TEXTS + KERAS_HUB_DIFFERS
    got = our_ids(tokenizers_by_length[max_seq_length], texts)
    for text, have in zip(texts, got):
        want = pack(hugging_face.encode(text, add_special_tokens=False).ids, max_seq_length)
        assert have == want, f"{text[:40]!r}"


def test_keras_hub_differences_match_hugging_face(tokenizers_by_length, keras_hub_ids,
                                                  hugging_face):
    tokenizer = tokenizers_by_length[128]
    ours = our_ids(tokenizer, KERAS_HUB_DIFFERS)
    theirs = [pack(row, 128) for row in keras_hub_ids(KERAS_HUB_DIFFERS)]
    for text, have, keras_hub in zip(KERAS_HUB_DIFFERS, ours, theirs):
        assert have == pack(hugging_face.encode(text, add_special_tokens=False).ids, 128)
        assert 100 not in have, f"{text!r}: no [UNK] expected"
        assert have != keras_hub, f"{text!r}: keras-hub now agrees; move it to TEXTS"


@pytest.mark.parametrize("text, ours, hugging_face_tokens", HUGGING_FACE_DIFFERS,
                         ids=[repr(case[0])[:14] for case in HUGGING_FACE_DIFFERS])
def test_known_hugging_face_differences(tokenizers_by_length, vocab, hugging_face,
                                        keras_hub_ids, text, ours, hugging_face_tokens):
    tokenizer = tokenizers_by_length[128]
    assert our_tokens(tokenizer, vocab, text) == ours
    assert our_ids(tokenizer, [text])[0] == pack(keras_hub_ids([text])[0], 128)
    assert hugging_face.encode(text, add_special_tokens=False).tokens == hugging_face_tokens


# === Packing ===


@pytest.mark.parametrize("max_seq_length", LENGTHS)
def test_mask_and_segment_ids(tokenizers_by_length, max_seq_length):
    out = tokenizers_by_length[max_seq_length](tf.constant(TEXTS))
    assert set(out) == {"input_ids", "input_mask", "segment_ids"}
    for value in out.values():
        assert value.dtype == tf.int32
        assert value.shape == (len(TEXTS), max_seq_length)
    ids = out["input_ids"].numpy()
    np.testing.assert_array_equal(out["input_mask"].numpy(), (ids != PAD).astype(np.int32))
    np.testing.assert_array_equal(out["segment_ids"].numpy(), 0)
    assert (ids[:, 0] == CLS).all()
    assert ((ids == SEP).sum(axis=1) == 1).all()  # exactly one [SEP], right after the text


def test_tokenize_gives_unpadded_ids_and_lengths_before_truncation(tokenizers_by_length,
                                                                   keras_hub_ids):
    tokenizer = tokenizers_by_length[16]
    ragged, lengths = tokenizer.tokenize(tf.constant(TEXTS))
    assert isinstance(ragged, tf.RaggedTensor)
    assert ragged.dtype == tf.int32 and lengths.dtype == tf.int32
    padded = tokenizer(tf.constant(TEXTS))
    expected_lengths = [len(row) + 2 for row in keras_hub_ids(TEXTS)]
    assert lengths.numpy().tolist() == expected_lengths
    for row, dense, mask in zip(ragged.to_list(), padded["input_ids"].numpy(),
                                padded["input_mask"].numpy()):
        assert row == dense[: mask.sum()].tolist()
        assert len(row) <= 16
    assert max(expected_lengths) > 16  # some texts really were truncated


def test_attributes(tokenizers_by_length, vocab):
    tokenizer = tokenizers_by_length[16]
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.unk_id) == \
        (CLS, SEP, PAD, 100)
    assert tokenizer.vocab_size == len(vocab) == 30522
    assert tokenizer.max_seq_length == 16 and tokenizer.lower_case is True


def test_empty_batch_and_tiny_length(vocab):
    tokenizer = BertTokenizer(vocab, lower_case=True, max_seq_length=2)
    out = tokenizer(tf.constant(["a b c", ""]))
    assert out["input_ids"].numpy().tolist() == [[CLS, SEP], [CLS, SEP]]
    ragged, lengths = tokenizer.tokenize(tf.constant(["a b c", ""]))
    assert ragged.to_list() == [[CLS, SEP], [CLS, SEP]] and lengths.numpy().tolist() == [5, 2]
    empty = tokenizer(tf.constant([], tf.string))
    assert empty["input_ids"].shape == (0, 2)


# === Graphs: tf.data, tf.function, SavedModel ===


def test_tf_data_map_on_batches(tokenizers_by_length):
    tokenizer = tokenizers_by_length[16]
    dataset = tf.data.Dataset.from_tensor_slices(TEXTS).batch(5)
    packed = list(dataset.map(tokenizer, num_parallel_calls=tf.data.AUTOTUNE))
    ids = np.concatenate([batch["input_ids"].numpy() for batch in packed])
    np.testing.assert_array_equal(ids, tokenizer(tf.constant(TEXTS))["input_ids"].numpy())

    unpadded = list(dataset.map(tokenizer.tokenize, num_parallel_calls=tf.data.AUTOTUNE))
    rows = [row for ragged, _ in unpadded for row in ragged.to_list()]
    lengths = np.concatenate([length.numpy() for _, length in unpadded])
    direct_rows, direct_lengths = tokenizer.tokenize(tf.constant(TEXTS))
    assert rows == direct_rows.to_list()
    np.testing.assert_array_equal(lengths, direct_lengths.numpy())


def test_inside_tf_function(tokenizers_by_length):
    tokenizer = tokenizers_by_length[16]

    @tf.function
    def features(texts):
        ragged, lengths = tokenizer.tokenize(texts)
        return tokenizer(texts)["input_ids"], ragged.row_lengths(), lengths

    ids, row_lengths, lengths = features(tf.constant(TEXTS[:4]))
    np.testing.assert_array_equal(ids.numpy(), our_ids(tokenizer, TEXTS[:4]))
    np.testing.assert_array_equal(row_lengths.numpy(), np.minimum(lengths.numpy(), 16))


def test_saved_model_round_trip(tokenizers_by_length, tmp_path):
    tokenizer = tokenizers_by_length[16]
    tf.saved_model.save(tokenizer, str(tmp_path),
                        signatures={"serving_default": tokenizer.__call__.get_concrete_function()})
    loaded = tf.saved_model.load(str(tmp_path))
    out = loaded.signatures["serving_default"](text=tf.constant(TEXTS))
    expected = tokenizer(tf.constant(TEXTS))
    for key, value in expected.items():
        np.testing.assert_array_equal(out[key].numpy(), value.numpy())


# === Cased vocabularies ===

CASED_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello", "hello", "café", "cafe",
               "World", "!", "É", "##cole", "e"]


def test_cased_keeps_case_and_accents(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(CASED_VOCAB) + "\n", encoding="utf-8")
    cased = BertTokenizer(path, lower_case=False, max_seq_length=12)
    assert cased.lower_case is False and cased.vocab_size == len(CASED_VOCAB)
    index = {token: i for i, token in enumerate(CASED_VOCAB)}
    ids = our_ids(cased, ["Hello café World!", "hello cafe world", "École"])
    assert ids[0][:6] == [2, index["Hello"], index["café"], index["World"], index["!"], 3]
    assert ids[1][:5] == [2, index["hello"], index["cafe"], 1, 3]  # "world" is not in vocab
    assert ids[2][:4] == [2, index["É"], index["##cole"], 3]

    uncased = BertTokenizer(path, lower_case=True, max_seq_length=12)
    assert our_ids(uncased, ["Hello café École"])[0][:5] == \
        [2, index["hello"], index["cafe"], index["e"], index["##cole"]]


def test_cased_matches_references(tmp_path):
    import keras_hub
    import tokenizers

    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(CASED_VOCAB) + "\n", encoding="utf-8")
    texts = ["Hello café World!", "hello CAFÉ, École!", "  ", "Hello" + "!" * 20]
    ours = our_ids(BertTokenizer(path, lower_case=False, max_seq_length=12), texts)
    keras_hub_tokenizer = keras_hub.tokenizers.BertTokenizer(
        vocabulary=str(path), lowercase=False, strip_accents=False)
    hugging_face = tokenizers.BertWordPieceTokenizer(str(path), lowercase=False,
                                                     strip_accents=False)
    for text, have, keras_hub_row in zip(texts, ours, as_lists(keras_hub_tokenizer(texts))):
        assert have == pack(keras_hub_row, 12, cls=2, sep=3, pad=0), text
        hf_row = hugging_face.encode(text, add_special_tokens=False).ids
        assert have == pack(hf_row, 12, cls=2, sep=3, pad=0), text


# === TFLite ===


def test_tflite_builtin_and_tf_text_ops_only(tokenizers_by_length):
    from ai_edge_litert.interpreter import InterpreterWithCustomOps

    tokenizer = tokenizers_by_length[16]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tokenizer.__call__.get_concrete_function()], tokenizer)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = True
    model = converter.convert()

    interpreter = InterpreterWithCustomOps(
        custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS, model_content=model)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not {op for op in ops if op.startswith("Flex")}, ops
    assert {"FastBertNormalize", "FastWordpieceTokenizeWithOffsets"} <= ops

    runner = interpreter.get_signature_runner("serving_default")
    for texts in (TEXTS[:1], TEXTS, TEXTS[3:6], ["", "   "]):  # the runner resizes the input
        out = runner(text=np.array(texts, dtype=object))
        expected = tokenizer(tf.constant(texts))
        for key, value in expected.items():
            np.testing.assert_array_equal(out[key], value.numpy(), err_msg=key)


# === Errors ===


def test_load_vocab(minilm_vocab_path, tmp_path):
    vocab = load_vocab(minilm_vocab_path)
    assert len(vocab) == 30522 and vocab[0] == "[PAD]" and vocab[101] == "[CLS]"
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nhello\r\n")
    assert load_vocab(crlf) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello"]


def test_load_vocab_errors(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.txt: vocabulary file not found"):
        load_vocab(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.txt: the WordPiece vocabulary is empty"):
        load_vocab(empty)
    partial = tmp_path / "partial.txt"
    partial.write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[CLS\]', '\[SEP\]'\]"):
        load_vocab(partial)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("[PAD]\ncafé\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_vocab(latin1)


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[UNK\]'\]"):
        BertTokenizer(["[PAD]", "[CLS]", "[SEP]", "a"], lower_case=True, max_seq_length=8)
    for bad in (1, 0, 8.0, True):
        with pytest.raises(ValueError, match="max_seq_length must be an int >= 2"):
            BertTokenizer(CASED_VOCAB, lower_case=True, max_seq_length=bad)


def test_artifact_round_trip(vocab, tmp_path):
    """save() writes vocab.txt and tokenizer.json; load() rebuilds a tokenizer giving the
    same ids, with the saved length unless a length is given."""
    tok = BertTokenizer(vocab, lower_case=True, max_seq_length=16)
    info = tok.save(tmp_path, vocab, origin="minilm")
    assert read_tokenizer_config(tmp_path) == info
    assert info["max_seq_length"] == 16 and info["vocab_size"] == len(vocab)
    loaded = BertTokenizer.load(tmp_path)
    texts = ["A surprisingly good film.", "Not my cup of tea at all, sadly"]
    assert our_ids(loaded, texts) == our_ids(tok, texts)
    assert BertTokenizer.load(tmp_path, max_seq_length=8).max_seq_length == 8


@pytest.mark.parametrize("content, message", [
    (None, "is missing"), ("{not json", "cannot be read"),
    ('{"lower_case": true}', "lacks max_seq_length, vocab_size")])
def test_tokenizer_config_errors_name_the_file(tmp_path, content, message):
    if content is not None:
        (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(ArtifactError, match=message) as err:
        read_tokenizer_config(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(err.value)
