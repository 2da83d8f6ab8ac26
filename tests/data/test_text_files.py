"""Reading local data files (data/text_files), describing them by content (core.files)
and the row checks of data/checks."""

import hashlib
import json

import pytest

from core.files import describe_files
from data.checks import rare_labels, shared_texts
from data.text_files.builder import DataError, read_rows

# A gzip header, then a deflate block of reserved type 11: zlib fails on the body.
CORRUPT_GZIP = bytes.fromhex("1f8b0800000000000003") + b"\xff" * 16


def jsonl(path, *rows, newline="\n"):
    path.write_text(newline.join(json.dumps(r, ensure_ascii=False) for r in rows) + newline,
                    encoding="utf-8")
    return path


def read(path, keys=("text", "label"), text_keys=("text",)):
    return list(read_rows(path, "jsonl", keys, text_keys=text_keys))


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    # U+2028, U+2029 and U+0085 are ordinary characters in a JSON string (only "\n"
    # ends a JSON Lines record); "\r\n" endings are JSON whitespace.
    texts = ["one\u2028two", "para\u2029graph", "next\u0085line"]
    path = jsonl(tmp_path / "a.jsonl", *[{"text": t, "label": "pos"} for t in texts],
                 newline="\r\n")
    assert list(read_rows(path, "jsonl", ("text", "label"))) == \
        [(i + 1, {"text": t, "label": "pos"}) for i, t in enumerate(texts)]


def test_jsonl_labels_may_be_numbers_or_booleans_but_texts_are_strings(tmp_path):
    path = jsonl(tmp_path / "a.jsonl", {"text": "a", "label": 1}, {"text": "b", "label": 2.5},
                 {"text": "c", "label": True}, {"text": "d", "label": "neg"})
    assert [row["label"] for _, row in read(path)] == ["1", "2.5", "true", "neg"]
    path = jsonl(tmp_path / "b.jsonl", {"text": "a", "label": 1}, {"text": 5, "label": 1})
    with pytest.raises(DataError) as err:
        read(path)
    assert str(err.value) == \
        f"{path}:2: key 'text' holds a number (5), expected a string"


@pytest.mark.parametrize("row, message", [
    ({"text": ["a", "list"], "label": "pos"}, "key 'text' holds a list ([\"a\", \"list\"]), "
                                              "expected a string"),
    ({"text": {"a": 1}, "label": "pos"}, "key 'text' holds an object ({\"a\": 1}), "
                                         "expected a string"),
    ({"text": "fine", "label": ["pos"]}, "key 'label' holds a list ([\"pos\"]), "
                                         "expected a string, number or boolean"),
])
def test_jsonl_lists_and_objects_are_refused_with_file_and_line(tmp_path, row, message):
    path = jsonl(tmp_path / "a.jsonl", {"text": "ok", "label": "pos"}, row)
    with pytest.raises(DataError) as err:
        read(path)
    assert str(err.value) == f"{path}:2: {message}"


def test_corrupt_gzip_body_is_a_data_error(tmp_path):
    path = tmp_path / "a.csv.gz"
    path.write_bytes(CORRUPT_GZIP)
    with pytest.raises(DataError, match=r"a\.csv\.gz: cannot read: .*invalid block type"):
        list(read_rows(path, "csv", ("text", "label")))


def test_describe_files_changes_with_any_byte(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"text,label\ngood,pos\n")
    before = describe_files([path])
    assert before == [{"path": str(path.resolve()), "bytes": 20,
                       "sha256": hashlib.sha256(b"text,label\ngood,pos\n").hexdigest()}]
    path.write_bytes(b"text,label\nfood,pos\n")  # one byte, same size
    after = describe_files([path])
    assert after[0]["bytes"] == 20 and after[0]["sha256"] != before[0]["sha256"]


def rows_of(*labels, split="train"):
    return [(f"{split} text {i}", label, "", f"{split}.csv:{i + 2}")
            for i, label in enumerate(labels)]


def test_rare_labels_name_their_rows():
    # 600 rows: "po" (1 row: a cut-off "pos"), "meh" (2) and "odd" (5 rows, under 1% of
    # the rows) are rare; "pos" and "neg" are not.
    labels = ["pos", "neg"] * 296 + ["odd"] * 5 + ["meh"] * 2 + ["po"]
    rows = {"train": rows_of(*labels[:500]), "test": rows_of(*labels[500:], split="test")}
    assert rare_labels(rows) == {
        "meh": {"rows": 2, "where": ["test.csv:99", "test.csv:100"]},
        "odd": {"rows": 5, "where": [f"test.csv:{n}" for n in range(94, 99)]},
        "po": {"rows": 1, "where": ["test.csv:101"]}}
    assert rare_labels({"train": rows_of(*["a", "b"] * 5)}) == {}  # 5 rows each: not rare


def test_shared_texts_count_distinct_texts_per_pair_of_splits():
    rows = {"train": [("same", "pos", "", "t.csv:2"), ("same", "pos", "", "t.csv:3"),
                      ("other", "neg", "", "t.csv:4")],
            "validation": [("same", "neg", "", "v.csv:2"), ("new", "neg", "", "v.csv:3")],
            "test": [("new", "pos", "", "e.csv:2"), ("Same", "pos", "", "e.csv:3")]}
    assert shared_texts(rows) == {"train/validation": [("t.csv:2", "v.csv:2")],
                                  "train/test": [],
                                  "validation/test": [("v.csv:3", "e.csv:2")]}
