"""MediaPipe's BERT tokenizer against ours, with a token probe (a TFLite model whose
scores are the token ids MediaPipe feeds it; benchmarks/mediapipe_tokenizer.py) on the
MiniLM vocabulary: ASCII text gets our ids, the classes docs/deployment.md ("MediaPipe's
tokenizer") lists differ as listed, and the app-side normalization it recommends makes
them agree."""

import numpy as np
import pytest

from benchmarks.mediapipe_tokenizer import (
    app_side_full,
    app_side_lower,
    build_probe,
    mediapipe_ids,
    our_ids,
)
from data.tokenizer import load_vocab

LENGTH = 24
ASCII = ["Hello, World!", "tHe MoViE wAs GrEaT!!", "IT'S A 10/10 FILM; don't (ok) [x]",
         "[CLS] typed [SEP] in text [UNK]", "good\tfilm\r\nreally", "",
         "a" * 101 + " long words are [UNK]", "Wonderful film " * 30]  # the last: truncated
# text -> (our WordPieces, MediaPipe's): what docs/deployment.md documents.
DIFFERENT = {
    "Café": ("cafe", "[UNK]"),                       # accents kept by MediaPipe
    "naïve": ("naive", "[UNK]"),
    "Д": ("д", "[UNK]"),                             # no lower-casing beyond ASCII
    "good\u00a0film": ("good film", "[UNK]"),        # NBSP is not a space to MediaPipe
    "really\u2026": ("really . . .", "really …"),     # no compatibility rewriting
    "9 \u00bd weeks": ("9 1 ##⁄ ##2 weeks", "9 ½ weeks"),
}
# Equal after `app_side_lower` (NFKD, no Mn, lower-case): the classes above.
FIXED_BY_APP_SIDE = [*DIFFERENT, "ÉCOLE ÜBER ΑΘΗΝΑ", "ｆｉｌｍ ﬁlm", "good\u3000film"]
# Still different after it, equal after `app_side_full` (case folding, Cf removed, Cc ->
# space): rare in reviews, none in the default test split.
FIXED_BY_FULL = ["straße", "good\u200bfilm", "\ufeffgood film", "good\x07film"]


@pytest.fixture(scope="module")
def vocab_path(minilm_vocab_path):
    return minilm_vocab_path


@pytest.fixture(scope="module")
def compared(tmp_path_factory, vocab_path):
    """(our ids, MediaPipe's ids) of every text here: as is, after `app_side_lower`, after
    `app_side_full`; MediaPipe runs once."""
    probe = build_probe(vocab_path, LENGTH, tmp_path_factory.mktemp("probe") / "probe.tflite")
    texts = ASCII + list(DIFFERENT) + FIXED_BY_APP_SIDE + FIXED_BY_FULL
    inputs = texts + [app_side_lower(t) for t in texts] + [app_side_full(t) for t in texts]
    theirs = mediapipe_ids(probe, inputs)
    ours = our_ids(vocab_path, LENGTH, texts)
    n = len(texts)
    as_is, lower, full = (dict(zip(texts, theirs[k * n:(k + 1) * n])) for k in range(3))
    return dict(zip(texts, ours)), as_is, lower, full


def words(ids, vocab) -> str:
    return " ".join(vocab[i] for i in ids[1:int((ids != 0).sum()) - 1])


def test_ascii_text_gets_our_ids(compared):
    ours, mediapipe, _, _ = compared
    for text in ASCII:
        np.testing.assert_array_equal(mediapipe[text], ours[text], err_msg=text)
    long = ours[ASCII[-1]]
    assert (long != 0).all() and long[-1] == 102  # truncated to LENGTH, [SEP] last


def test_documented_classes_differ_as_documented(compared, vocab_path):
    vocab = load_vocab(vocab_path)
    ours, mediapipe, _, _ = compared
    for text, (our_words, mediapipe_words) in DIFFERENT.items():
        assert (words(ours[text], vocab), words(mediapipe[text], vocab)) == \
            (our_words, mediapipe_words), text


def test_app_side_normalization_gives_our_ids(compared):
    ours, mediapipe, lower, full = compared
    for text in FIXED_BY_APP_SIDE:
        assert not np.array_equal(mediapipe[text], ours[text]), text
        np.testing.assert_array_equal(lower[text], ours[text], err_msg=text)
    for text in FIXED_BY_FULL:
        assert not np.array_equal(lower[text], ours[text]), text
        np.testing.assert_array_equal(full[text], ours[text], err_msg=text)
