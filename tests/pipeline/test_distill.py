"""The distill stage on the tiny easy-task run: the student's shape, counts and accuracy
as its manifest states them, the teacher's tokenization kept through the id remap,
config errors before any artifact, `distill.enabled`, and resume after a kill."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from data.input import read_split
from data.tokenizer import BertTokenizer, load_vocab
from models.artifact import load_model
from models.bert import BertArchitecture
from models.evaluation import predict_keras
from models.shape_pruning import flops_per_example, parameter_breakdown
from pipeline.cli import main, pipeline_stages
from pipeline.config import ConfigError, load_config
from tests.helpers import TINY, TRAINED, kill_after_first_checkpoint, manifest, run_stage

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def kept_ids(run_dir):
    """The ids the student should keep: every id of the training split, and the
    special tokens."""
    train = read_split(run_dir / "prepare", "train", with_text=False)
    ids = np.unique(np.concatenate([e["input_ids"] for e in train.as_numpy_iterator()]))
    vocab = load_vocab(run_dir / "prepare" / "vocab.txt")
    return np.union1d(ids, [vocab.index(t) for t in SPECIALS])


def test_student_has_the_configured_shape_and_stated_counts(distilled_run):
    """tiny.yaml's student: teacher layer 1 of 2 (evenly spaced, the last kept), 1 of 2
    heads of width 16, 32 of 64 FFN neurons, the rows of the training split's tokens."""
    out = distilled_run / "distill"
    m = manifest(distilled_run, "distill")["metrics"]
    teacher, teacher_meta = load_model(distilled_run / "finetune")
    student, meta = load_model(out)
    teacher_arch = BertArchitecture(**teacher_meta["architecture"])
    arch = BertArchitecture(**meta["architecture"])
    assert json.loads((out / "model.json").read_text())["architecture"] == \
        meta["architecture"]
    kept = kept_ids(distilled_run)
    assert (arch.num_layers, arch.num_heads, arch.head_size, arch.intermediate_size) == \
        (1, 1, 16, 32)
    assert arch.hidden_size == teacher_arch.hidden_size == 32
    assert arch.vocab_size == len(kept) < teacher_arch.vocab_size == 30522
    assert arch.input_vocab_size == teacher_arch.vocab_size
    assert student.get_layer("embeddings_word").input_dim == arch.vocab_size
    assert meta["made_by"] == "distill" and meta["labels"] == ["neg", "pos"]
    assert meta["teacher"]["architecture"] == teacher_meta["architecture"]
    assert m["shape"] == {"keep_layers": [1], "teacher_layers": 2, "num_heads": 1,
                          "teacher_heads": 2, "intermediate_size": 32,
                          "teacher_intermediate_size": 64, "vocab_rows": len(kept),
                          "teacher_vocab_rows": 30522}

    # Parameters: the loaded models', and the student's by hand from its shapes.
    parameters = m["parameters"]
    assert parameters["teacher"] == parameter_breakdown(teacher)
    assert parameters["student"] == parameter_breakdown(student)
    hidden, width, inner = 32, 16, 32
    attention = 3 * (hidden * width + width) + width * hidden + hidden
    ffn = 2 * hidden * inner + inner + hidden
    assert parameters["student"]["encoder"] == attention + ffn + 2 * 2 * hidden  # + 2 norms
    assert parameters["student"]["word_embeddings"] == len(kept) * hidden
    assert parameters["student"]["other_embeddings"] == \
        parameters["teacher"]["other_embeddings"]
    assert parameters["student"]["head"] == parameters["teacher"]["head"]
    assert parameters["ratio"] == pytest.approx(
        parameters["teacher"]["total"] / parameters["student"]["total"], abs=1e-3)
    assert parameters["ratio"] > 100  # the 30522-row table is the teacher's bulk

    # FLOPs per example at the prepared length: a quarter (half the layers, half the
    # attention width, half the FFN).
    flops = m["flops_per_example"]
    pooler = meta.get("pooling") == "cls"
    assert flops["seq_length"] == 32
    assert flops["teacher"] == flops_per_example(teacher_arch, 32, 2, pooler)
    assert flops["student"] == flops_per_example(arch, 32, 2, pooler)
    assert flops["ratio"] == pytest.approx(flops["teacher"] / flops["student"], abs=1e-3)
    assert 3.9 < flops["ratio"] < 4.0

    scores = np.load(out / "importance.npz")
    assert scores["heads"].shape == (2, 2) and scores["neurons"].shape == (2, 64)
    for name in ("heads", "neurons"):
        assert np.all(np.isfinite(scores[name])) and np.all(scores[name] >= 0), name
        assert np.all(scores[name].sum(-1) > 0), name  # every layer's units score


def test_student_learns_the_easy_task_from_the_teacher(distilled_run):
    """Evaluated like the evaluate stage (measured: 1.0 on the 48 test examples), the
    figures reproduced from the saved model, and in agreement with the teacher."""
    out = distilled_run / "distill"
    m = manifest(distilled_run, "distill")["metrics"]
    evaluation = m["evaluation"]
    assert evaluation["accuracy"] >= 0.9 and evaluation["blessing"]["blessed"]
    assert json.loads((out / "blessing.json").read_text())["blessed"]
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] == \
        evaluation["accuracy"]
    student, _ = load_model(out)
    teacher, _ = load_model(distilled_run / "finetune")
    prep = distilled_run / "prepare"
    y, probs = predict_keras(student, prep, "test", 64)
    assert len(y) == evaluation["examples"] == 48
    assert np.mean(probs.argmax(-1) == y) == pytest.approx(evaluation["accuracy"])
    np.testing.assert_allclose(np.load(out / "predictions.npz")["probabilities"], probs,
                               atol=1e-5)
    _, teacher_probs = predict_keras(teacher, prep, "test", 64)
    assert np.mean(probs.argmax(-1) == teacher_probs.argmax(-1)) >= 0.9

    history = json.loads((out / "history.json").read_text())
    assert history == m["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]  # tiny.yaml: distill.train.epochs 2
    assert m["training"]["steps"] == 2 * m["training"]["steps_per_epoch"] > 0
    assert any((out / "logs").rglob("events.out.tfevents.*"))


def test_student_keeps_the_teachers_tokenization(distilled_run):
    """Same tokenizer files; the remap table sends each kept id to its own row (in id
    order) and every other id to the [UNK] row, so an unseen word reads as [UNK]."""
    out = distilled_run / "distill"
    for name in ("vocab.txt", "tokenizer.json", "labels.txt"):
        assert (out / name).read_bytes() == (distilled_run / "finetune" / name).read_bytes()
    student, meta = load_model(out)
    table = student.get_layer("embeddings_remap").table.numpy()
    vocab = load_vocab(out / "vocab.txt")
    unk = vocab.index("[UNK]")
    kept = kept_ids(distilled_run)
    assert table.shape == (len(vocab),) and table.dtype == np.int32
    np.testing.assert_array_equal(table[kept], np.arange(len(kept)))
    removed = np.setdiff1d(np.arange(len(vocab)), kept)
    assert len(removed) == len(vocab) - len(kept)
    assert np.all(table[removed] == table[unk])
    assert meta["architecture"]["vocab_size"] == table.max() + 1

    tokenizer = BertTokenizer.load(out)
    teacher_tokenizer = BertTokenizer.load(distilled_run / "finetune")
    texts = tf.constant(["the cinema was wonderful", "the movie was wonderful"])
    features = tokenizer(texts)
    np.testing.assert_array_equal(features["input_ids"].numpy(),
                                  teacher_tokenizer(texts)["input_ids"].numpy())
    cinema = vocab.index("cinema")
    ids = features["input_ids"].numpy()
    assert cinema in ids[0] and cinema not in kept
    as_unk = {k: v.numpy() for k, v in features.items()}
    as_unk["input_ids"] = np.where(ids == cinema, unk, ids)
    logits = student(features, training=False).numpy()
    np.testing.assert_array_equal(student(as_unk, training=False).numpy()[0], logits[0])
    assert not np.array_equal(logits[0], logits[1])  # [UNK] is not "movie"


def fresh_run(trained_run, tmp_path):
    for stage in ("prepare", "finetune"):
        shutil.copytree(trained_run / stage, tmp_path / stage)
    return tmp_path


@pytest.mark.parametrize("overrides, message", [
    (["distill.keep_layers=[0, 2]"],
     "'distill.keep_layers': the teacher has layers 0..1, found [2]"),
    (["distill.num_layers=3"], "'distill.num_layers': the teacher has 2 layers, found 3"),
    (["distill.num_heads=3"], "'distill.num_heads': the teacher has 2 per layer, found 3"),
    (["distill.intermediate_size=65"],
     "'distill.intermediate_size': the teacher has 64 per layer, found 65"),
    (["distill.vocabulary=bogus"],
     "'distill.vocabulary': expected one of all, train, found 'bogus'"),
    (["distill.train.distill_weight=0", "distill.train.augment_fraction=0",
      "distill.train.distill_hidden_weight=0"],
     "'distill.train.distill_weight': the student learns from the teacher: set "
     "distill_weight or distill_hidden_weight > 0"),
    # tiny.yaml's perturbed copies are checked first, and need the teacher too.
    (["distill.train.distill_weight=0"], "'distill.train.augment_fraction': perturbed "
                                         "copies have no label of their own; they need "
                                         "distill_weight > 0"),
    (["distill.foo=1"], "unknown config key 'distill.foo'"),
])
def test_bad_values_are_one_clear_error_and_no_artifact(overrides, message, trained_run,
                                                        tmp_path, easy_data, capsys):
    run_dir = fresh_run(trained_run, tmp_path)
    before = sorted(p.name for p in run_dir.iterdir())
    assert run_stage("distill", run_dir, *easy_data, *overrides) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("slimbert: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no artifact, no scratch


def test_enabled_false_leaves_the_student_out(tmp_path, capsys):
    on = load_config(TINY)
    assert pipeline_stages(on) == ["prepare", "finetune", "evaluate", "prune", "distill",
                                   "quantize", "export", "report"]
    assert on.quantize.sources == ("finetune", "prune", "distill")
    assert {t for t in on.export.targets if t.startswith("student-")} == {
        "student-cpu", "student-gpu", "student-int8", "student-qat"}

    off = load_config(TINY, ["distill.enabled=false"])
    assert pipeline_stages(off) == ["prepare", "finetune", "evaluate", "prune",
                                    "quantize", "export", "report"]
    assert off.quantize.sources == ("finetune", "prune")
    assert off.export.targets == tuple(t for t in on.export.targets
                                       if not t.startswith("student-"))
    # Only the student's parts go: the user's other choices stay.
    mine = load_config(TINY, ["distill.enabled=false", "quantize.sources=[prune, distill]",
                              "export.targets=[cpu, student-cpu, pruned-qat]"])
    assert mine.quantize.sources == ("prune",)
    assert mine.export.targets == ("cpu", "pruned-qat")
    with pytest.raises(ConfigError, match="'export.model': 'distill' needs "
                                          "distill.enabled true"):
        load_config(TINY, ["distill.enabled=false", "export.model=distill"])
    for key, only in (("quantize.sources", "[distill]"), ("export.targets", "[student-cpu]")):
        with pytest.raises(ConfigError, match=f"'{key}': only the student's"):
            load_config(TINY, ["distill.enabled=false", f"{key}={only}"])

    # What `slimbert config` prints is the resolved config, and it loads back the same.
    assert main(["config", "--config", TINY, "--set", "distill.enabled=false"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert load_config(path) == off
    assert "student-" not in text and "- distill" not in text


@pytest.mark.slow  # ~30 s on 2 busy cores: a fresh process to kill, then the rerun
def test_killed_distill_resumes_to_the_same_student(distilled_run, tmp_path, easy_data):
    """kill -9 after the first checkpoint (tiny.yaml: every 4 steps); the rerun resumes
    there and ends with the student of the never-interrupted run (the fixture's, same
    config and inputs), bit for bit."""
    run_dir = fresh_run(distilled_run, tmp_path)
    overrides = [*easy_data, *TRAINED]
    kill_after_first_checkpoint("distill", run_dir, *overrides)
    assert run_stage("distill", run_dir, *overrides) == 0
    m = manifest(run_dir, "distill")["metrics"]
    expected = manifest(distilled_run, "distill")["metrics"]
    assert 0 < m["training"]["resumed_from_step"] < m["training"]["steps"]
    assert m["training"]["steps"] == expected["training"]["steps"]
    for a, b in zip(load_model(run_dir / "distill")[0].get_weights(),
                    load_model(distilled_run / "distill")[0].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in metrics["training"]
                ["history"]] for metrics in (m, expected)]
    assert untimed[0] == untimed[1]
    assert m["evaluation"]["accuracy"] == expected["evaluation"]["accuracy"]
    assert not (run_dir / ".work").exists()
