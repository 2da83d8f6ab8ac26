"""The prepare stage end to end: built-in corpus, local files, tfds catalog, bad input."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from data.input import batch_examples, read_split
from data.tokenizer import BertTokenizer
from pipeline.cli import main
from tests.helpers import REPO, TINY


def prepare(run_dir, tfds_dir, *overrides, config=TINY):
    args = ["prepare", "--config", config, "--run-dir", str(run_dir),
            "--set", f"data.tfds_data_dir={tfds_dir}"]
    for item in overrides:
        args += ["--set", item]
    return main(args)


def manifest(run_dir):
    return json.loads((run_dir / "prepare" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tfds_dir):
    run_dir = tmp_path_factory.mktemp("run")
    assert prepare(run_dir, tfds_dir) == 0
    return run_dir


def test_tiny_prepare_writes_a_complete_artifact(tiny_run):
    out = tiny_run / "prepare"
    m = manifest(tiny_run)
    assert m["stage"] == "prepare"
    assert m["metrics"]["labels"] == ["rotten", "fresh"]
    for split in ("train", "validation", "test"):
        stats = m["metrics"]["splits"][split]
        assert stats["examples"] == 96
        assert sum(stats["label_counts"].values()) == 96
        assert 2 < stats["tokens"]["p50"] <= stats["tokens"]["max"]
        assert 0 <= stats["truncation_rate"] <= 1
        assert stats["groups"] > 0
    assert m["metrics"]["shared_groups"] == {"train/validation": 0, "train/test": 0,
                                             "validation/test": 0}
    assert set(m["files"]) == {"train.tfrecord", "validation.tfrecord", "test.tfrecord",
                               "labels.txt", "vocab.txt", "tokenizer.json", "config.yaml"}
    assert (out / "labels.txt").read_text() == "rotten\nfresh\n"
    assert [p.name for p in tiny_run.iterdir()] == ["prepare"]


def test_cached_ids_equal_the_serving_tokenizer(tiny_run):
    out = tiny_run / "prepare"
    tokenizer = BertTokenizer.load(out)
    examples = list(read_split(out, "test").as_numpy_iterator())
    texts = [e["text"] for e in examples]
    served = tokenizer(tf.constant(texts))["input_ids"].numpy()
    for example, row in zip(examples, served):
        n = len(example["input_ids"])
        assert n <= tokenizer.max_seq_length
        np.testing.assert_array_equal(row[:n], example["input_ids"])
        assert (row[n:] == 0).all()
    stats = manifest(tiny_run)["metrics"]["splits"]["test"]
    labels = [int(e["label"]) for e in examples]
    assert [labels.count(0), labels.count(1)] == list(stats["label_counts"].values())


def test_batches_pad_to_longest_example(tiny_run):
    ds = read_split(tiny_run / "prepare", "train")
    longest = max(len(e["input_ids"]) for e in ds.take(8).as_numpy_iterator())
    features, labels = next(iter(batch_examples(ds, batch_size=8)))
    assert features["input_ids"].shape == (8, longest)
    assert features["input_ids"].dtype == tf.int32
    np.testing.assert_array_equal(features["input_mask"].numpy(),
                                  (features["input_ids"].numpy() != 0).astype(np.int32))
    fixed, _ = next(iter(batch_examples(ds, batch_size=8, pad_to=32)))
    assert fixed["input_ids"].shape == (8, 32)


def test_up_to_date_stage_is_skipped_and_force_reruns(tmp_path, tfds_dir):
    assert prepare(tmp_path, tfds_dir, "data.max_examples=16") == 0
    first = manifest(tmp_path)
    assert prepare(tmp_path, tfds_dir, "data.max_examples=16") == 0
    assert manifest(tmp_path) == first  # skipped: not rewritten
    assert main(["prepare", "--config", TINY, "--run-dir", str(tmp_path), "--force", "--set",
                 f"data.tfds_data_dir={tfds_dir}", "--set", "data.max_examples=16"]) == 0
    forced = manifest(tmp_path)
    assert forced["created_at"] >= first["created_at"] and forced["files"] == first["files"]
    assert forced["fingerprint"] == first["fingerprint"]
    assert prepare(tmp_path, tfds_dir, "data.max_examples=8") == 0
    changed = manifest(tmp_path)
    assert changed["fingerprint"] != first["fingerprint"]
    assert changed["metrics"]["splits"]["train"]["examples"] == 8


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def rows_csv(n, offset=0, label=lambda i: "pos" if i % 2 else "neg", sep=","):
    lines = [f"text{sep}label{sep}who"]
    for i in range(offset, offset + n):
        lines.append(f"sample number {i} is {'good' if i % 2 else 'bad'}{sep}{label(i)}"
                     f"{sep}user{i % 7}")
    return "\n".join(lines) + "\n"


def test_files_with_given_splits(tmp_path, tfds_dir):
    files = {s: write(tmp_path / f"{s}.csv", rows_csv(10, offset=i * 10))
             for i, s in enumerate(("train", "validation", "test"))}
    sets = [f"data.files.{s}={p}" for s, p in files.items()]
    assert prepare(tmp_path / "run", tfds_dir, "data.source=files", "data.labels=[neg, pos]",
                   *sets) == 0
    m = manifest(tmp_path / "run")["metrics"]
    assert m["labels"] == ["neg", "pos"]
    assert {s: v["examples"] for s, v in m["splits"].items()} == \
        {"train": 10, "validation": 10, "test": 10}
    assert m["splits"]["test"]["label_counts"] == {"neg": 5, "pos": 5}


def test_one_jsonl_file_split_by_group_with_inferred_labels(tmp_path, tfds_dir):
    lines = [json.dumps({"review": f"text {i} " + "word " * (i % 50), "stars": 1 + i % 3,
                         "author": f"a{i % 40}"}) for i in range(400)]
    path = write(tmp_path / "reviews.jsonl", "\n".join(lines) + "\n")
    assert prepare(tmp_path / "run", tfds_dir, "data.source=files", f"data.path={path}",
                   "data.text_key=review", "data.label_key=stars", "data.group_key=author",
                   "data.max_seq_length=16", "data.max_examples=0") == 0
    m = manifest(tmp_path / "run")["metrics"]
    assert m["labels"] == ["1", "2", "3"]
    sizes = {s: v["examples"] for s, v in m["splits"].items()}
    assert sum(sizes.values()) == 400 and 280 <= sizes["train"] <= 360
    assert m["shared_groups"] == {"train/validation": 0, "train/test": 0, "validation/test": 0}
    assert m["splits"]["train"]["truncation_rate"] > 0.3


def test_tsv_format(tmp_path, tfds_dir):
    path = write(tmp_path / "data.tsv", rows_csv(60, sep="\t"))
    assert prepare(tmp_path / "run", tfds_dir, "data.source=files", f"data.path={path}",
                   "data.max_examples=0") == 0
    assert sum(s["examples"] for s in manifest(tmp_path / "run")["metrics"]["splits"]
               .values()) == 60


def test_a_new_dataset_leaves_no_temporary_folder(tmp_path, tfds_dir):
    # tfds makes a /tmp/tmp*tfds folder for every builder of an unprepared dataset and
    # never removes it; the source loader must clean it up.
    before = set(Path(tempfile.gettempdir()).glob("tmp*tfds"))
    path = write(tmp_path / "data.csv", rows_csv(30))
    assert prepare(tmp_path / "run", tfds_dir, "data.source=files", f"data.path={path}",
                   "data.max_examples=0") == 0
    assert set(Path(tempfile.gettempdir()).glob("tmp*tfds")) - before == set()


BAD_INPUTS = {
    "missing file": (lambda d: d / "nope.csv", "nope.csv does not exist"),
    "missing column": (lambda d: write(d / "a.csv", "body,label\nhello,pos\n"),
                       "a.csv:1: missing column 'text' (columns: body, label)"),
    "unknown label": (lambda d: write(d / "a.csv", rows_csv(5, label=lambda i: "maybe"
                                                            if i == 3 else "pos")),
                      "a.csv:5: label 'maybe' is not one of the declared labels"),
    "non-utf8": (lambda d: write(d / "a.csv", rows_csv(3).encode() + "café,pos,x\n"
                                 .encode("latin-1")),
                 "a.csv:5: bytes b'\\xe9' are not UTF-8"),
    "blank text": (lambda d: write(d / "a.csv", rows_csv(3) + "   ,pos,x\n"),
                   "a.csv:5: blank text in column 'text'"),
    "empty file": (lambda d: write(d / "a.csv", ""), "a.csv: empty file"),
    "header only": (lambda d: write(d / "a.csv", "text,label\n"), "a.csv: no data rows"),
    "ragged row": (lambda d: write(d / "a.csv", rows_csv(2) + "only-text\n"),
                   "a.csv:4: the row's field count differs"),
    "bad json": (lambda d: write(d / "a.jsonl", '{"text": "x", "label": "pos"}\n{oops\n'),
                 "a.jsonl:2: invalid JSON"),
    "empty split": (lambda d: write(d / "a.csv", rows_csv(1)),
                    "split 'validation' is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly(case, tmp_path, tfds_dir, capsys):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path)
    run_dir = tmp_path / "run"
    code = prepare(run_dir, tfds_dir, "data.source=files", f"data.path={path}",
                   "data.labels=[neg, pos]")
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert err.count("error:") == 1
    assert not run_dir.exists() or list(run_dir.iterdir()) == []


def test_unknown_tfds_name_and_bad_config(tmp_path, tfds_dir, capsys):
    run_dir = tmp_path / "run"
    assert prepare(run_dir, tfds_dir, "data.source=tfds", "data.tfds_name=imdb_reveiws") == 2
    assert "unknown tfds dataset 'imdb_reveiws' in data.tfds_name (did you mean imdb_reviews" \
        in capsys.readouterr().err
    assert prepare(run_dir, tfds_dir, "data.max_seq_length=1") == 2
    assert "invalid config value for 'data.max_seq_length'" in capsys.readouterr().err
    assert not run_dir.exists() or list(run_dir.iterdir()) == []


@pytest.mark.parametrize("name, text_key, labels", [
    ("imdb_reviews", "text", ["neg", "pos"]),
    ("glue/sst2", "sentence", ["negative", "positive"]),
])
def test_tfds_catalog_with_mock_data(name, text_key, labels, tmp_path, tfds_dir):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        code = prepare(tmp_path, tfds_dir, "data.source=tfds", f"data.tfds_name={name}",
                       f"data.text_key={text_key}", "data.label_key=label",
                       "data.splits={train: train, validation: train, test: validation}"
                       if name == "glue/sst2" else
                       "data.splits={train: train, validation: test, test: test}")
    assert code == 0
    m = manifest(tmp_path)["metrics"]
    assert m["labels"] == labels
    assert {s: v["examples"] for s, v in m["splits"].items()} == \
        {"train": 24, "validation": 24, "test": 24}
    assert m["source"]["tfds_name"] == name


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--help"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0
    for option in ("--config", "--set", "--run-dir", "--force"):
        assert option in result.stdout
    assert "labels.txt" in result.stdout  # the artifact layout is documented
