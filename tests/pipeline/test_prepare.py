"""The prepare stage end to end: built-in corpus, local files, tfds catalog, bad input."""

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from data.input import batch_examples, bucket_examples, bucket_lengths, read_split
from data.tokenizer import BertTokenizer
from pipeline.cli import main
from tests.data.test_text_files import CORRUPT_GZIP
from tests.helpers import REPO, TINY, run_stage


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


def test_batch_pipelines_run_without_the_autotuner(tiny_run):
    """Training and evaluation batches (and what is made of them: the trainer's repeat,
    skip, take and prefetch) have tf.data's autotuner off: with it, an epoch waited for
    its thread's next wake-up (docs/pipeline-time.md). The same batches either way."""
    ds = read_split(tiny_run / "prepare", "train", with_text=False)
    bucketed = bucket_examples(ds, 8, bucket_lengths(32))
    for made in (batch_examples(ds, 8), bucketed,
                 bucketed.repeat().skip(1).take(3).prefetch(tf.data.AUTOTUNE)):
        assert made.options().autotune.enabled is False
    on = ds.padded_batch(8, padded_shapes={"input_ids": [None], "label": []})
    for (features, labels), batch in zip(batch_examples(ds, 8), on):
        np.testing.assert_array_equal(features["input_ids"], batch["input_ids"])
        np.testing.assert_array_equal(labels, batch["label"])


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
    "corrupt gzip": (lambda d: write(d / "a.csv.gz", CORRUPT_GZIP),
                     "a.csv.gz: cannot read: Error -3 while decompressing data: invalid block "
                     "type"),
    "list as text": (lambda d: write(d / "a.jsonl", '{"text": "x", "label": "pos"}\n'
                                     '{"text": ["a", "list"], "label": "pos"}\n'),
                     "a.jsonl:2: key 'text' holds a list ([\"a\", \"list\"]), expected a "
                     "string"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly(case, tmp_path, tfds_dir, capsys):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path)
    run_dir = tmp_path / "run"
    cached = set(tfds_dir.rglob("*"))
    code = prepare(run_dir, tfds_dir, "data.source=files", f"data.path={path}",
                   "data.labels=[neg, pos]")
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert err.count("error:") == 1
    assert not run_dir.exists() or list(run_dir.iterdir()) == []
    assert set(tfds_dir.rglob("*")) - cached == set()  # no empty folders in the cache


def test_max_seq_length_beyond_the_checkpoints_positions_fails_in_prepare(tmp_path, tfds_dir,
                                                                           capsys):
    """The built-in checkpoint's 512 positions are known once it is read: prepare checks
    before reading any data (a random model's are checked with the config)."""
    run_dir = tmp_path / "run"
    assert prepare(run_dir, tfds_dir, "model.checkpoint=builtin",
                   "data.max_seq_length=600") == 2
    assert "slimbert: error: invalid config value for 'data.max_seq_length': 600 exceeds the " \
        "512 positions of model.checkpoint 'builtin'; set it to at most 512" \
        in capsys.readouterr().err
    assert not run_dir.exists()
    assert prepare(run_dir, tfds_dir, "data.max_seq_length=65") == 2  # tiny: 64 positions
    assert "'data.max_seq_length': 65 exceeds model.max_positions 64" \
        in capsys.readouterr().err
    assert not run_dir.exists()


def given_splits(folder, *overrides):
    """Train/validation/test CSV files of 10 rows each and the overrides that read them."""
    files = {s: write(folder / f"{s}.csv", rows_csv(10, offset=i * 10))
             for i, s in enumerate(("train", "validation", "test"))}
    return files, ["data.source=files", "data.labels=[neg, pos]",
                   *[f"data.files.{s}={p}" for s, p in files.items()], *overrides]


def test_editing_one_byte_of_a_data_file_reruns_prepare_and_finetune(tmp_path, tfds_dir):
    files, sets = given_splits(tmp_path, f"data.tfds_data_dir={tfds_dir}", "finetune.epochs=1")
    run_dir = tmp_path / "run"
    assert run_stage("prepare", run_dir, *sets) == 0
    assert run_stage("finetune", run_dir, *sets) == 0
    first, trained = manifest(run_dir), json.loads((run_dir / "finetune" / "manifest.json")
                                                   .read_text())
    old = files["train"].read_bytes()
    assert first["external_inputs"]["data"]["files"]["train"] == {
        "path": str(files["train"].resolve()), "bytes": len(old),
        "sha256": hashlib.sha256(old).hexdigest()}
    vocab = first["external_inputs"]["tokenizer"]["files"]
    assert [Path(f["path"]).name for f in vocab] == ["vocab.txt"]
    assert run_stage("prepare", run_dir, *sets) == 0
    assert manifest(run_dir) == first  # same bytes: up to date

    new = old.replace(b"sample number 4 is bad", b"sample number 4 is bat")
    files["train"].write_bytes(new)  # one byte, same size
    assert run_stage("prepare", run_dir, *sets) == 0
    second = manifest(run_dir)
    assert second["fingerprint"] != first["fingerprint"]
    assert second["external_inputs"]["data"]["files"]["train"]["sha256"] == \
        hashlib.sha256(new).hexdigest()
    texts = {e["text"] for e in read_split(run_dir / "prepare", "train").as_numpy_iterator()}
    assert b"sample number 4 is bat" in texts and b"sample number 4 is bad" not in texts
    assert run_stage("finetune", run_dir, *sets) == 0  # its input changed: it reruns
    retrained = json.loads((run_dir / "finetune" / "manifest.json").read_text())
    assert retrained["fingerprint"] != trained["fingerprint"]
    assert retrained["inputs"]["prepare"]["manifest_sha256"] == \
        hashlib.sha256((run_dir / "prepare" / "manifest.json").read_bytes()).hexdigest()


def test_checkpoint_files_are_external_inputs_of_prepare_and_finetune(tmp_path):
    from pipeline import finetune
    from pipeline import prepare as prepare_stage
    from pipeline.config import load_config

    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"weights" * 10)
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    vocab = write(folder / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    config = load_config(TINY, [f"model.checkpoint={folder}"])

    def names(described):
        return [(Path(f["path"]).name, f["bytes"]) for f in described["files"]]

    weights = finetune.external_inputs(config)["checkpoint"]
    assert names(weights) == [("config.json", 22), ("model.safetensors", 70)]
    assert names(prepare_stage.external_inputs(config)["tokenizer"]) == [("vocab.txt", 30)]
    (folder / "model.safetensors").write_bytes(b"weighTs" * 10)
    assert finetune.external_inputs(config)["checkpoint"]["files"][1]["sha256"] != \
        weights["files"][1]["sha256"]
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhellO\n")
    assert prepare_stage.external_inputs(config)["tokenizer"]["files"][0]["sha256"] == \
        hashlib.sha256(vocab.read_bytes()).hexdigest()


def test_a_cut_off_inferred_label_is_warned_about_with_its_line(tmp_path, tfds_dir, capsys):
    files, sets = given_splits(tmp_path)
    # Two columns, 60 rows, then a last line cut off inside its label ("pos" -> "po").
    write(files["train"], "".join(f"sample number {i} is fine,{'pos' if i % 2 else 'neg'}\n"
                                  for i in range(60)).join(["text,label\n", "sample 60,po"]))
    sets = [s for s in sets if not s.startswith("data.labels")]  # labels inferred
    assert prepare(tmp_path / "run", tfds_dir, *sets) == 0
    err = capsys.readouterr().err
    assert f"label 'po' has only 1 of 81 rows ({files['train']}:62): a cut-off or mistyped " \
        "label?" in err
    m = manifest(tmp_path / "run")["metrics"]
    assert m["labels"] == ["neg", "po", "pos"]
    assert m["rare_labels"] == {"po": {"rows": 1, "where": [f"{files['train']}:62"]}}


def test_texts_shared_between_splits_are_counted_and_warned_about(tmp_path, tfds_dir, capsys):
    files, sets = given_splits(tmp_path)
    # validation repeats two training texts (its lines 2-3), test one (its line 2)
    write(files["validation"], rows_csv(2) + rows_csv(8, offset=10).split("\n", 1)[1])
    write(files["test"], rows_csv(1, offset=5) + rows_csv(9, offset=20).split("\n", 1)[1])
    assert prepare(tmp_path / "run", tfds_dir, *sets) == 0
    m = manifest(tmp_path / "run")["metrics"]
    assert m["shared_texts"] == {"train/validation": 2, "train/test": 1, "validation/test": 0}
    err = capsys.readouterr().err
    assert f"train/test: 1 distinct texts occur in both splits (e.g. {files['train']}:7 = " \
        f"{files['test']}:2)" in err
    assert "train/validation: 2 distinct texts" in err and "validation/test" not in err


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
