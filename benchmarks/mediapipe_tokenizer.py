"""Where MediaPipe's BERT tokenizer differs from ours, measured with a "token probe".

MediaPipe Tasks' `TextClassifier` tokenizes a text itself, from the vocabulary in the
model's metadata (`export.tflite_metadata`), with its own BERT tokenizer: ASCII-only
lower-casing (`absl::AsciiStrToLower`, even for cased models), no Unicode normalization,
a split on ASCII whitespace, punctuation and CJK, then WordPiece. Ours
(`data.tokenizer.BertTokenizer`, tensorflow_text's `FastBertTokenizer` with
`lower_case=True`) case-folds every script, rewrites compatibility characters and strips
accents (as NFKD plus dropping nonspacing marks would: "é" -> "e", "…" -> "...",
"½" -> "1⁄2", "ﬁ" -> "fi", NBSP -> space), deletes format characters (zero-width
spaces, BOM) and turns control characters into spaces. To see the ids MediaPipe feeds a
model, the probe is a TFLite model whose output is its `input_ids` input as float
(`[1, L]`, L "classes"), with our metadata: MediaPipe's score of class i is the id at
position i.

The script compares, at `--max-seq-length` L (default 128; the default config trains at
64, and 128 leaves every test text untruncated):

- crafted texts, one group per suspected class of difference (`CASES`);
- every text of the built-in corpus's test split (Rotten Tomatoes, split as the default
  config splits it: seed 42, 80/10/10 by movie), each differing text attributed to the
  non-ASCII character classes it contains (`char_class`);
- the same after an app-side normalization of the text before `classify` (`APP_SIDE`:
  NFKD, remove nonspacing marks, lower-case, and variants), against our ids of the
  original text (what the model was trained on).

    python benchmarks/mediapipe_tokenizer.py [--max-seq-length 128]
        [--json benchmarks/results/mediapipe_tokenizer.json]

MediaPipe runs in its own Python (`export.mediapipe_tasks`: `.venv-mediapipe/`, or
`$SLIMBERT_MEDIAPIPE_PYTHON`). tests/export/test_mediapipe_tokenizer.py checks the
findings with a small probe.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core  # noqa: E402,F401  (Keras 2 before TensorFlow loads)

# The default config's data.max_seq_length (configs/default.yaml).
DEFAULT_LENGTH = 64
UNK_ID = 100  # [UNK] in the MiniLM (BERT uncased) vocabulary
RESULTS = Path(__file__).resolve().parent / "results" / "mediapipe_tokenizer.json"

# Crafted texts by suspected class. Each text is compared as a whole.
CASES: dict[str, list[str]] = {
    "ascii_mixed_case": ["Hello World", "tHe MoViE wAs GrEaT!!", "IT'S A 10/10 FILM",
                         "don't stop-believing (really) [ok] {x} <y> a|b ~c ^d `e` $5 @me"],
    "accented_latin": ["café", "naïve", "über", "crème brûlée", "jalapeño", "résumé"],
    "accented_capitals": ["Café", "Über", "École", "ÉTÉ", "Ångström", "ÇA VA"],
    "non_ascii_capitals": ["É", "Ö", "Σ", "Д", "ΑΘΗΝΑ", "МОСКВА", "Ø", "Æ", "Ł"],
    "non_ascii_lowercase": ["σοφία", "москва", "ø", "æ", "ł", "ð", "þ"],
    "final_sigma": ["ΟΔΟΣ", "οδος", "οδοσ"],
    "sharp_s_and_ligatures": ["straße", "STRASSE", "ﬁlm", "oﬀ", "œuvre"],
    "cjk": ["我爱这部电影", "電影很好", "映画"],
    "japanese_kana": ["こんにちは", "がぎぐげご", "カタカナ", "ガンダム", "ﾊﾟﾝ"],
    "korean_hangul": ["영화", "좋아요"],
    "arabic": ["فيلم جميل", "فِيلْم"],
    "emoji": ["great 😀 film", "👍👍", "good😀", "❤️"],
    "nbsp": ["good\u00a0film", "a\u00a0b", "10\u00a0%"],
    "other_unicode_spaces": ["good\u3000film", "good\u2009film", "good\u2003film",
                             "good\u202ffilm", "good\u0085film"],
    "zero_width": ["good\u200bfilm", "good\u200dfilm", "\ufeffgood film", "good\u200cfilm",
                   "good\u2060film", "good\u00adfilm"],
    "control_characters": ["good\x00film", "good\x07film", "good\tfilm", "good\rfilm",
                            "good\nfilm", "good\x0bfilm", "good\x0cfilm", "good\x1ffilm",
                            "good\x7ffilm"],
    "replacement_character": ["good\ufffdfilm", "\ufffd"],
    "combining_marks": ["cafe\u0301", "e\u0301", "n\u0303o", "a\u0308\u0308"],
    "long_words": ["a" * 99, "a" * 100, "a" * 101, "a" * 150, "é" * 50, "é" * 51,
                   "e\u0301" * 40],
    "special_tokens_typed": ["[CLS]", "[SEP] x [UNK]", "[PAD]", "[MASK]", "[cls]"],
    "curly_quotes_and_dashes": ["it\u2019s \u201cgood\u201d \u2014 really\u2026",
                                "\u2018a\u2019 \u2013 b", "\u00abc\u00bb \u201ed\u201c"],
    "numbers_with_separators": ["1,000,000", "3.14", "10:30", "1\u00a0000", "50%", "$9.99",
                                "\u00bd", "\u00b2", "\u2460", "\uff11\uff12"],
    "fullwidth_and_symbols": ["\uff21\uff22\uff23", "\uff41\uff42", "\u00a9 2020",
                              "\u20ac5", "5\u00b0C", "\u2122"],
}


def _decompose(text: str, form: str) -> str:
    """`text` in Unicode normalization `form`, without its nonspacing marks (Mn)."""
    decomposed = unicodedata.normalize(form, text)
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def app_side_nfd_lower(text: str) -> str:
    """NFD, drop nonspacing marks (Mn), Unicode lower-case: accents only."""
    return _decompose(text, "NFD").lower()


def app_side_lower(text: str) -> str:
    """NFKD, drop nonspacing marks (Mn), Unicode lower-case: the three lines of Kotlin,
    Swift and JavaScript in docs/deployment.md ("MediaPipe's tokenizer")."""
    return _decompose(text, "NFKD").lower()


def app_side_casefold(text: str) -> str:
    """NFKD, drop nonspacing marks, Unicode case folding (ß -> ss, ς -> σ, as ours)."""
    return _decompose(text, "NFKD").casefold()


def app_side_full(text: str) -> str:
    """`app_side_casefold`, then format characters (Cf: zero-width spaces and joiners,
    BOM, soft hyphen) removed and control characters (Cc) other than tab, line feed and
    carriage return turned into spaces: everything our normalizer does."""
    out = []
    for c in app_side_casefold(text):
        category = unicodedata.category(c)
        if category == "Cf":
            continue
        out.append(" " if category == "Cc" and c not in "\t\n\r" else c)
    return "".join(out)


APP_SIDE: dict[str, Callable[[str], str]] = {
    "nfd_strip_marks_lower": app_side_nfd_lower,
    "nfkd_strip_marks_lower": app_side_lower,
    "nfkd_strip_marks_casefold": app_side_casefold,
    "nfkd_strip_marks_casefold_controls": app_side_full,
}
# The normalization docs/deployment.md recommends.
RECOMMENDED = "nfkd_strip_marks_lower"


def char_class(c: str) -> str:
    """The class of one character, for attributing a difference."""
    if c.isascii():
        return "ascii_control" if (ord(c) < 32 or ord(c) == 127) and c not in "\t\n\r\x0c " \
            else "ascii"
    category = unicodedata.category(c)
    decomposed = unicodedata.normalize("NFD", c)
    if category[0] == "Z" or c == "\x85":
        return "unicode_space"
    if category in ("Cc", "Cf"):
        return "control_or_format"
    if category[0] == "M":
        return "combining_mark"
    if unicodedata.normalize("NFKD", c) != decomposed:
        return "compatibility_character"  # … ½ ² ﬁ ＡＢ ™: NFKD rewrites them
    if decomposed != c and any(unicodedata.category(d) == "Mn" for d in decomposed):
        return "accented_capital" if c.isupper() else "accented_letter"
    if c.lower() != c:
        return "non_ascii_capital"
    if c.casefold() != c:
        return "case_folding"
    if decomposed != c:
        return "decomposed_by_nfd"
    if category[0] == "P":
        return "punctuation"
    if category[0] == "S":
        return "symbol"
    return "other_letter_or_number"


# === The probe ===

def build_probe(vocab: Path, max_seq_length: int, path: Path) -> Path:
    """Writes the token probe (module docstring) for `vocab` at `max_seq_length` to
    `path`: inputs input_ids/input_mask/segment_ids int32 [1, L], output `probabilities`
    float32 [1, L] = input_ids, and MediaPipe's metadata with L labels."""
    import tensorflow as tf

    from data.features import INPUT_NAMES
    from export.tflite_metadata import with_metadata

    specs = [tf.TensorSpec([1, max_seq_length], tf.int32, name=name) for name in INPUT_NAMES]

    @tf.function(input_signature=specs)
    def probe(input_ids, input_mask, segment_ids):
        # 0 * mask and 0 * segment ids keep the two inputs in the converted graph.
        ids = input_ids + 0 * input_mask + 0 * segment_ids
        return {"probabilities": tf.cast(ids, tf.float32)}

    function = probe.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], probe)
    flat = with_metadata(converter.convert(), vocab=vocab,
                         labels=[f"position_{i}" for i in range(max_seq_length)],
                         name="token probe", description="output = input_ids", version="1")
    path.write_bytes(flat)
    return path


def mediapipe_ids(probe: Path, texts: Sequence[str]) -> np.ndarray:
    """The ids (int32 [N, L]) MediaPipe's TextClassifier feeds the probe for `texts`."""
    from export.mediapipe_tasks import classify_texts

    scores, _ = classify_texts(probe, list(texts))
    return np.rint(scores).astype(np.int32)


def our_ids(vocab: Path, max_seq_length: int, texts: Sequence[str]) -> np.ndarray:
    """Our tokenizer's `input_ids` (int32 [N, L]) for `texts` (uncased, as MiniLM)."""
    import tensorflow as tf

    from data.tokenizer import BertTokenizer

    tokenizer = BertTokenizer(vocab, lower_case=True, max_seq_length=max_seq_length)
    return tokenizer(tf.constant(list(texts), tf.string))["input_ids"].numpy()


def default_vocab() -> Path:
    from models import assets

    return assets.minilm_dir() / "vocab.txt"


# === Comparison ===

def _tokens(ids: np.ndarray, vocab: list[str]) -> list[str]:
    return [vocab[i] for i in ids if i != 0]


def _content(ids: np.ndarray) -> np.ndarray:
    """The WordPiece ids between [CLS] and [SEP]."""
    return ids[1:int((ids != 0).sum()) - 1]


def _example(text: str, ours: np.ndarray, theirs: np.ndarray, vocab: list[str]) -> dict:
    return {"text": text, "ours": " ".join(_tokens(ours, vocab)),
            "mediapipe": " ".join(_tokens(theirs, vocab))}


def compare_cases(probe: Path, vocab_path: Path, max_seq_length: int) -> dict:
    from data.tokenizer import load_vocab

    vocab = load_vocab(vocab_path)
    texts = [t for group in CASES.values() for t in group]
    ours = our_ids(vocab_path, max_seq_length, texts)
    theirs = {"as_is": mediapipe_ids(probe, texts)}
    ours_changed = {}
    for name, normalize in APP_SIDE.items():
        normalized = [normalize(t) for t in texts]
        theirs[name] = mediapipe_ids(probe, normalized)
        ours_changed[name] = (our_ids(vocab_path, max_seq_length, normalized) != ours).any(1)
    out, row = {}, 0
    for group, group_texts in CASES.items():
        rows = range(row, row + len(group_texts))
        row += len(group_texts)
        entry = {"texts": len(group_texts)}
        for variant, ids in theirs.items():
            differ = [i for i in rows if not np.array_equal(ours[i], ids[i])]
            entry[f"differ_{variant}"] = len(differ)
            if differ:
                entry[f"examples_{variant}"] = [
                    _example(texts[i], ours[i], ids[i], vocab) for i in differ[:4]]
        for variant, changed in ours_changed.items():
            if changed[list(rows)].any():
                entry[f"ours_changed_by_{variant}"] = [texts[i] for i in rows if changed[i]]
        same = [i for i in rows if np.array_equal(ours[i], theirs["as_is"][i])]
        if same:
            entry["same_as_is"] = [texts[i] for i in same[:6]]
        out[group] = entry
    return out


def test_split_texts(seed: int = 42) -> list[str]:
    """The built-in corpus's test split, as the default config's prepare stage reads it."""
    from data.config import DataConfig
    from data.sources import load_source

    source = load_source(DataConfig(), seed=seed)
    return [text for text, _, _, _ in source.splits["test"]()]


def compare_texts(probe: Path, vocab_path: Path, max_seq_length: int,
                  texts: Sequence[str], examples: int = 4) -> dict:
    """Counts of differing texts, attributed to character classes, as is and after each
    `APP_SIDE` normalization."""
    from data.tokenizer import load_vocab

    vocab = load_vocab(vocab_path)
    ours = our_ids(vocab_path, max_seq_length, texts)
    lengths = (ours != 0).sum(axis=1)
    result = {"texts": len(texts), "ascii_texts": sum(t.isascii() for t in texts),
              "truncated_at_max_seq_length": int((lengths == max_seq_length).sum())}
    # Curly quotes, dashes and other punctuation split alike (CASES; 64 agreeing texts).
    neutral = {"ascii", "punctuation"}
    for variant, normalize in {"as_is": None, **APP_SIDE}.items():
        inputs = [normalize(t) for t in texts] if normalize else list(texts)
        theirs = mediapipe_ids(probe, inputs)
        differ = [i for i in range(len(texts)) if not np.array_equal(ours[i], theirs[i])]
        by_class: dict[str, list[int]] = collections.defaultdict(list)
        sole: collections.Counter = collections.Counter()
        for i in differ:
            classes = {char_class(c) for c in texts[i]} - neutral
            for name in classes:
                by_class[name].append(i)
            if len(classes) == 1:
                sole[next(iter(classes))] += 1
        entry = {"differ": len(differ),
                 "differ_ascii": sum(texts[i].isascii() for i in differ),
                 f"differ_in_first_{DEFAULT_LENGTH - 2}_tokens": sum(
                     not np.array_equal(_content(ours[i])[:DEFAULT_LENGTH - 2],
                                        _content(theirs[i])[:DEFAULT_LENGTH - 2])
                     for i in differ),
                 "texts_containing_class": {k: len(v) for k, v in sorted(by_class.items())},
                 "texts_whose_only_non_ascii_class": dict(sorted(sole.items())),
                 "examples": {k: [_example(texts[i], ours[i], theirs[i], vocab)
                                  for i in v[:examples]] for k, v in sorted(by_class.items())}}
        entry["unk_tokens"] = {"ours": int((ours == UNK_ID).sum()),
                               "mediapipe": int((theirs == UNK_ID).sum())}
        if normalize:
            # Our tokenizer gives the same ids with or without the normalization.
            entry["ours_changed_by_normalization"] = int(
                (our_ids(vocab_path, max_seq_length, inputs) != ours).any(axis=1).sum())
        if variant == "as_is":
            agree = [i for i in range(len(texts)) if i not in set(differ)
                     and not texts[i].isascii()]
            entry["non_ascii_texts_that_agree"] = len(agree)
            entry["classes_in_agreeing_non_ascii_texts"] = dict(sorted(collections.Counter(
                name for i in agree for name in {char_class(c) for c in texts[i]} - neutral
            ).items()))
            entry["non_ascii_characters_in_differing_texts"] = dict(collections.Counter(
                f"{c} U+{ord(c):04X} {char_class(c)}" for i in differ for c in set(texts[i])
                if not c.isascii()).most_common())
        result[variant] = entry
    return result


def alias_vocab_experiment(vocab_path: Path, max_seq_length: int, texts: Sequence[str],
                           folder: Path) -> dict:
    """Could a differently written vocabulary in the metadata help? A vocabulary line is
    an id, so an alias (e.g. "é" for "e") must be a new line, whose id a remapping
    Gather in the model would have to send back to the original id. Measured: the
    vocabulary plus an alias line for each accented or non-ASCII capital letter (and its
    "##" form) whose folded form is in the vocabulary; MediaPipe's ids remapped."""
    from data.tokenizer import load_vocab

    vocab = load_vocab(vocab_path)
    index = {token: i for i, token in reversed(list(enumerate(vocab)))}
    aliases: list[tuple[str, int]] = []
    for code in range(0xC0, 0x530):
        c = chr(code)
        folded = app_side_casefold(c)
        if folded == c or c in index or not c.isalpha():
            continue
        for prefix in ("", "##"):
            if prefix + folded in index:
                aliases.append((prefix + c, index[prefix + folded]))
    extended = folder / "vocab_with_aliases.txt"
    extended.write_text("".join(f"{t}\n" for t in vocab + [a for a, _ in aliases]),
                        encoding="utf-8")
    remap = np.array(list(range(len(vocab))) + [i for _, i in aliases], np.int32)
    probe = build_probe(extended, max_seq_length, folder / "probe_aliases.tflite")
    ours = our_ids(vocab_path, max_seq_length, texts)
    theirs = remap[mediapipe_ids(probe, texts)]
    differ = [i for i in range(len(texts)) if not np.array_equal(ours[i], theirs[i])]
    return {"alias_lines": len(aliases), "texts": len(texts), "differ": len(differ),
            "examples": [_example(texts[i], ours[i], theirs[i], vocab) for i in differ[:4]]}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from core.native_logs import quiet_native_startup

    quiet_native_startup()
    started = time.perf_counter()
    vocab = default_vocab()
    with tempfile.TemporaryDirectory(prefix="slimbert-token-probe-") as folder:
        probe = build_probe(vocab, args.max_seq_length, Path(folder) / "probe.tflite")
        cases = compare_cases(probe, vocab, args.max_seq_length)
        texts = test_split_texts()
        test_split = compare_texts(probe, vocab, args.max_seq_length, texts)
        aliases = alias_vocab_experiment(vocab, args.max_seq_length, texts, Path(folder))
        long_text = " ".join(["Wonderful film"] * 200)
        truncation = bool(np.array_equal(mediapipe_ids(probe, [long_text]),
                                         our_ids(vocab, args.max_seq_length, [long_text])))
    from importlib.metadata import version

    results = {"max_seq_length": args.max_seq_length, "vocab": "all-MiniLM-L6-v2 (uncased)",
               "mediapipe": "1.2.2", "tensorflow_text": version("tensorflow-text"),
               "long_ascii_text_truncated_alike": truncation,
               "app_side_normalizations": {k: v.__doc__.split("\n")[0] if v.__doc__ else k
                                           for k, v in APP_SIDE.items()},
               "alias_vocabulary_on_test_split": aliases, "cases": cases, "test_split": test_split,
               "seconds": round(time.perf_counter() - started, 1)}
    summary = {k: results["test_split"][k]["differ"] for k in ("as_is", *APP_SIDE)}
    print(f"test split: {test_split['texts']} texts ({test_split['ascii_texts']} ASCII); "
          f"differing ids: {summary}")
    print(f"with an alias vocabulary: {aliases['differ']} of {aliases['texts']} differ")
    for name, entry in cases.items():
        print(f"{name:28s} {entry['texts']:2d} texts, differ as is {entry['differ_as_is']}, "
              + ", ".join(f"{k} {entry[f'differ_{k}']}" for k in APP_SIDE))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results


if __name__ == "__main__":
    main()
