"""Fine-tuning and evaluation on tiny models: learning, resume, multi-worker, metrics."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models.artifact import load_model
from models.distill import distillation_loss, hidden_distillation_loss, hidden_state_model
from models.evaluation import bless, classification_metrics, predict_keras
from models.optimization import WarmupLinearDecay, make_optimizer
from models.training import make_train_step
from tests.helpers import REPO, TINY, kill_after_first_checkpoint, manifest, run_stage


def test_tiny_model_learns_and_is_blessed(trained_run):
    trained = trained_run
    ft = manifest(trained, "finetune")["metrics"]
    assert len(ft["history"]) == 4 == ft["epochs"]
    assert ft["steps"] == 4 * ft["steps_per_epoch"]
    assert ft["history"][-1]["train_loss"] < ft["history"][0]["train_loss"]
    assert ft["best_val_accuracy"] >= 0.9
    ev = manifest(trained, "evaluate")["metrics"]
    assert ev["accuracy"] >= 0.9
    assert ev["blessing"]["blessed"] is True
    assert sum(map(sum, ev["confusion_matrix"])) == ev["examples"]
    assert (trained / "finetune" / "logs" / "train").is_dir()
    assert 0 < ft["first_step_seconds"] < ft["train_seconds"]


def test_manifest_records_where_the_time_went(trained_run):
    run = manifest(trained_run, "finetune")
    timings = run["timings"]
    assert timings["train"]["count"] == run["metrics"]["epochs"]  # one per epoch's steps
    assert timings["train"]["seconds"] > 0 and timings["evaluate"]["count"] >= 4
    assert timings["io"]["count"] >= 1  # checkpoints, model.keras, file hashes
    phases = sum(t["seconds"] for name, t in timings.items() if name != "other")
    assert phases <= run["duration_s"] + 0.01
    assert phases + timings["other"]["seconds"] == pytest.approx(run["duration_s"], abs=0.01)
    # Validation inside training counts as evaluate: train is below the epochs' seconds.
    assert timings["train"]["seconds"] <= run["metrics"]["train_seconds"] + 0.01
    assert set(manifest(trained_run, "evaluate")["timings"]) >= {"evaluate", "io", "other"}


def test_saved_model_reproduces_evaluation(trained_run):
    trained = trained_run
    model, meta = load_model(trained / "finetune")
    assert meta["labels"] == ["neg", "pos"] and meta["made_by"] == "finetune"
    labels, probs = predict_keras(model, trained / "prepare", "test", 32)
    saved = np.load(trained / "evaluate" / "predictions.npz")
    np.testing.assert_array_equal(saved["labels"], labels)
    np.testing.assert_allclose(saved["probabilities"], probs, atol=1e-5)


def test_classification_metrics_by_hand():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3, abs=1e-6),
                                   "f1": pytest.approx(0.8, abs=1e-6), "support": 3}
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)
    blessing = bless(m, min_accuracy=0.7)
    assert blessing["blessed"] is False and blessing["checks"]["accuracy"]["passed"] is False


def test_schedule_and_weight_decay_exclusions():
    schedule = WarmupLinearDecay(1e-3, total_steps=100, warmup_steps=10)
    assert [float(schedule(s)) for s in (0, 5, 10, 55, 100)] == \
        pytest.approx([0, 5e-4, 1e-3, 5e-4, 0], abs=1e-9)
    kernel = tf.Variable(tf.ones([2, 2]), name="dense/kernel")
    bias = tf.Variable(tf.ones([2]), name="dense/bias")
    gamma = tf.Variable(tf.ones([2]), name="layer_0_ffn_norm/gamma")
    opt = make_optimizer(peak_lr=0.1, total_steps=10, warmup_steps=0, weight_decay=0.5,
                         clip_norm=1.0)
    opt.apply_gradients([(tf.zeros_like(v), v) for v in (kernel, bias, gamma)])
    assert float(kernel[0, 0]) == pytest.approx(1 - 0.1 * 0.5)  # decayed
    assert float(bias[0]) == 1.0 and float(gamma[0]) == 1.0  # excluded


# Two epochs of 48 steps with a checkpoint every 3 steps and a weight average (whose
# state must be resumed too).
RESUMABLE = ["finetune.epochs=2", "finetune.batch_size=8", "finetune.checkpoint_every=3",
             "finetune.ema_decay=0.9"]


@pytest.fixture(scope="module")
def killed_finetune(tmp_path_factory, easy_data):
    """A run folder whose finetune was killed (SIGKILL) right after its first resumable
    checkpoint: prepare's artifact and the `.work` scratch, no finetune artifact."""
    run_dir = tmp_path_factory.mktemp("killed")
    overrides = [*easy_data, *RESUMABLE]
    assert run_stage("prepare", run_dir, *overrides) == 0
    kill_after_first_checkpoint("finetune", run_dir, *overrides)
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted_finetune(killed_finetune, tmp_path_factory, easy_data):
    """The same finetune, never interrupted: (weights, manifest metrics)."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(killed_finetune / "prepare", run_dir / "prepare")
    assert run_stage("finetune", run_dir, *easy_data, *RESUMABLE) == 0
    return load_model(run_dir / "finetune")[0].get_weights(), \
        manifest(run_dir, "finetune")["metrics"]


def _assert_same_training(run_dir, uninterrupted):
    """The finetune artifact in run_dir holds the weights and history of the
    uninterrupted run, bit for bit."""
    weights, expected = uninterrupted
    for a, b in zip(load_model(run_dir / "finetune")[0].get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    found = manifest(run_dir, "finetune")["metrics"]
    untimed = [{k: v for k, v in h.items() if k != "seconds"} for h in found["history"]]
    assert untimed == [{k: v for k, v in h.items() if k != "seconds"}
                       for h in expected["history"]]
    assert found["best_epoch"] == expected["best_epoch"]
    # The average was restored with the weights: one update per step, not since resume.
    assert found["weight_average"] == expected["weight_average"] == \
        {"decay": 0.9, "from_step": 0, "updates": found["steps"]}


def test_killed_finetune_resumes_to_the_same_weights(killed_finetune, uninterrupted_finetune,
                                                     tmp_path, easy_data):
    """After kill -9, the rerun resumes at the same batch and ends with the weights, the
    history and the weight average of a run that was never interrupted (dropout masks,
    batches, optimizer and metrics all continue where they stopped)."""
    run_dir = shutil.copytree(killed_finetune, tmp_path / "run")
    # A kill can land between writing ckpt-N and recording it in the `checkpoint` state
    # file: resuming must not depend on that file.
    for state in run_dir.glob(".work/finetune-*/ckpt/checkpoint"):
        state.unlink()
    assert run_stage("finetune", run_dir, *easy_data, *RESUMABLE) == 0
    m = manifest(run_dir, "finetune")["metrics"]
    assert 0 < m["resumed_from_step"] < m["steps"] == 2 * m["steps_per_epoch"]
    _assert_same_training(run_dir, uninterrupted_finetune)
    assert all("val_accuracy_raw" in h for h in m["history"])
    assert not (run_dir / ".work").exists()  # scratch removed after success


def test_unreadable_checkpoint_falls_back_with_a_warning(killed_finetune,
                                                         uninterrupted_finetune, tmp_path,
                                                         easy_data, capsys):
    """A truncated newest checkpoint (and a garbled state file) no longer end every rerun,
    --force included, in a traceback: the rerun names the file, sets it aside, resumes
    from the checkpoint before it and still ends where an uninterrupted run does."""
    run_dir = shutil.copytree(killed_finetune, tmp_path / "run")
    ckpt_dir = next(run_dir.glob(".work/finetune-*/ckpt"))
    numbers = sorted(int(p.stem.split("-")[-1]) for p in ckpt_dir.glob("ckpt-*.index"))
    if len(numbers) == 1:  # the kill came before the second checkpoint: make one to spoil
        for path in ckpt_dir.glob(f"ckpt-{numbers[0]}.*"):
            shutil.copyfile(path, ckpt_dir / path.name.replace(
                f"ckpt-{numbers[0]}", f"ckpt-{numbers[0] + 3}"))
        numbers.append(numbers[0] + 3)
    newest = ckpt_dir / f"ckpt-{numbers[-1]}"
    data = next(ckpt_dir.glob(f"{newest.name}.data-*"))
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
    (ckpt_dir / "checkpoint").write_text("garbled {")
    capsys.readouterr()
    assert _run_forced(run_dir, easy_data) == 0
    err = capsys.readouterr().err
    assert f"cannot resume from checkpoint {newest}" in err and "Traceback" not in err
    m = manifest(run_dir, "finetune")["metrics"]
    assert m["resumed_from_step"] == numbers[-2]
    _assert_same_training(run_dir, uninterrupted_finetune)


def _run_forced(run_dir, easy_data):
    """`slimbert finetune --force` in-process (run_stage has no flags)."""
    from pipeline.cli import main

    args = ["finetune", "--config", TINY, "--run-dir", str(run_dir), "--force"]
    for item in [*easy_data, *RESUMABLE]:
        args += ["--set", item]
    return main(args)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_cpu_processes(tmp_path, easy_data):
    """(With a weight average, kept in the strategy's variables like the weights.)"""
    overrides = [*easy_data, "finetune.epochs=1", "finetune.batch_size=16",
                 "finetune.strategy=multi_worker", "finetune.ema_decay=0.9"]
    assert run_stage("prepare", tmp_path / "w0", *overrides) == 0
    shutil.copytree(tmp_path / "w0" / "prepare", tmp_path / "w1" / "prepare")
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        args = [sys.executable, "-m", "pipeline.finetune", "--config", TINY, "--run-dir",
                str(tmp_path / f"w{index}")]
        for item in overrides:
            args += ["--set", item]
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=400)[0])
        finally:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs[-1][-3000:]
    chief = manifest(tmp_path / "w0", "finetune")["metrics"]
    other = manifest(tmp_path / "w1", "finetune")["metrics"]
    assert chief["replicas"] == 2
    assert chief["steps"] == other["steps"] == chief["steps_per_epoch"]
    assert chief["weight_average"]["updates"] == other["weight_average"]["updates"] \
        == chief["steps"]
    # Synchronous training: both workers end with the same weights.
    m0, _ = load_model(tmp_path / "w0" / "finetune")
    m1, _ = load_model(tmp_path / "w1" / "finetune")
    for a, b in zip(m0.get_weights(), m1.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_vocabulary_mismatch_is_an_error(tmp_path, easy_data, capsys):
    assert run_stage("prepare", tmp_path, *easy_data) == 0
    vocab = tmp_path / "small_vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nawful\nwonderful\n")
    assert run_stage("finetune", tmp_path, *easy_data, f"model.vocab={vocab}") == 2
    assert "the prepared data uses a 30522-token vocabulary but the model has 6" \
        in capsys.readouterr().err
    assert not (tmp_path / "finetune").exists()


def test_keras_is_legacy():
    assert keras.__name__ == "tf_keras"
    assert tf.keras.layers.Dense is keras.layers.Dense


@pytest.mark.slow
@pytest.mark.parametrize("option", ["finetune.xla=true", "finetune.precision=mixed_bfloat16",
                                    "finetune.precision=mixed_float16"])
def test_precision_and_xla_options_train(option, tmp_path, easy_data):
    overrides = [*easy_data, "finetune.epochs=3", "finetune.batch_size=16",
                 "finetune.learning_rate=0.002", option]
    try:
        assert run_stage("prepare", tmp_path, *overrides) == 0
        assert run_stage("finetune", tmp_path, *overrides) == 0
        # The precision was the model's, not the process's: later stages run float32.
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    m = manifest(tmp_path, "finetune")["metrics"]
    assert m["best_val_accuracy"] >= 0.85
    # The artifact computes in float32 whatever the training precision was, and gives
    # the validation accuracy the training saw.
    model, _ = load_model(tmp_path / "finetune")
    dtypes = {layer.compute_dtype for layer in model.submodules
              if isinstance(layer, keras.layers.Layer) and layer.compute_dtype}
    assert "float32" in dtypes and dtypes <= {"float32", "int32"}  # int32: the id inputs
    from models.evaluation import predict_keras

    y, probs = predict_keras(model, tmp_path / "prepare", "validation", 64)
    assert abs(float(np.mean(probs.argmax(-1) == y)) - m["best_val_accuracy"]) <= 0.05


def test_distillation_loss_by_hand():
    student = np.array([[1.0, -1.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    teacher = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], np.float32)
    t = 2.0
    p = np.exp(teacher / t) / np.exp(teacher / t).sum(-1, keepdims=True)
    q = np.exp(student / t) / np.exp(student / t).sum(-1, keepdims=True)
    expected = (p * (np.log(p) - np.log(q))).sum(-1) * t * t
    got = distillation_loss(tf.constant(student), tf.constant(teacher), t).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[1] == 0.0


def test_pure_distillation_follows_the_teacher_not_the_labels(trained_run):
    """distill_weight 1: the labels are ignored (here: all flipped) and the student
    learns the teacher's answers."""
    from data.input import batch_examples, read_split
    from models.bert import BertArchitecture, build_classifier

    teacher, meta = load_model(trained_run / "finetune")
    keras.utils.set_random_seed(0)
    student = build_classifier(BertArchitecture(**meta["architecture"]), 2,
                               pooling=meta["pooling"])
    batches = list(batch_examples(read_split(trained_run / "prepare", "train",
                                             with_text=False), 32))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=keras.losses.Reduction.NONE)
    step = make_train_step(tf.distribute.get_strategy(), student,
                           keras.optimizers.Adam(2e-3), loss_fn, teacher=teacher,
                           distill_weight=1.0, distill_temperature=2.0)
    for i in range(36):
        features, labels = batches[i % len(batches)]
        step(features, 1 - labels)
    _, teacher_probs = predict_keras(teacher, trained_run / "prepare", "test", 64)
    y, student_probs = predict_keras(student, trained_run / "prepare", "test", 64)
    agreement = np.mean(student_probs.argmax(-1) == teacher_probs.argmax(-1))
    assert agreement >= 0.9 and np.mean(student_probs.argmax(-1) == y) >= 0.85


def test_hidden_distillation_loss_by_hand():
    rng = np.random.default_rng(0)
    student = [rng.normal(size=(2, 4, 3)).astype(np.float32) for _ in range(2)]
    teacher = [rng.normal(size=(2, 4, 3)).astype(np.float32) for _ in range(2)]
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.int32)
    expected = np.zeros(2)
    for s, t in zip(student, teacher):
        per_token = ((s - t) ** 2).mean(-1)
        expected += (per_token * mask).sum(-1) / mask.sum(-1)
    got = hidden_distillation_loss([tf.constant(x) for x in student],
                                   [tf.constant(x) for x in teacher], tf.constant(mask))
    np.testing.assert_allclose(got.numpy(), expected / 2, rtol=1e-5)


def test_hidden_distillation_pulls_a_pruned_student_to_the_teacher(trained_run):
    """On the pruning-wrapped clone (whose norms are shared with the source model),
    hidden-state distillation alone lowers the hidden-state gap to the teacher."""
    import tensorflow_model_optimization as tfmot

    from data.input import batch_examples, read_split
    from models import pruning

    teacher, _ = load_model(trained_run / "finetune")
    student, _ = load_model(trained_run / "finetune")
    wrapped = pruning.wrap_for_pruning(
        student, tfmot.sparsity.keras.ConstantSparsity(0.9, 0, frequency=1),
        (".*",), ("embeddings_.*", "classifier"))
    hidden_student, hidden_teacher = hidden_state_model(wrapped), hidden_state_model(teacher)
    assert len(hidden_student.outputs) == 1 + 2  # logits + the tiny model's 2 layers
    features, labels = next(iter(batch_examples(
        read_split(trained_run / "prepare", "train", with_text=False), 32)))

    def gap():
        return float(np.mean(hidden_distillation_loss(
            hidden_student(features)[1:], hidden_teacher(features)[1:],
            features["input_mask"])))

    optimizer = keras.optimizers.Adam(1e-3)
    hook = pruning.PruningStepHook()
    trainer = type("T", (), {"model": wrapped, "optimizer": optimizer})()
    hook.on_train_begin(trainer)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=keras.losses.Reduction.NONE)
    step = make_train_step(tf.distribute.get_strategy(), wrapped, optimizer,
                           lambda y, logits: 0.0 * loss_fn(y, logits), teacher=teacher,
                           distill_hidden_weight=1.0)
    hook.on_step_begin(trainer)
    step(features, labels)  # applies the 90% masks
    before = gap()
    for _ in range(30):
        hook.on_step_begin(trainer)
        step(features, labels)
    assert before > 0 and gap() < 0.8 * before
    kernels = pruning.kernel_sparsity(pruning.strip(wrapped), pruning.select_layers(
        student, (".*",), ("embeddings_.*", "classifier")))
    assert min(k["sparsity"] for k in kernels.values()) >= 0.89


def test_perturbed_copies(trained_run):
    """perturb_examples: the chosen share of examples becomes unlabelled copies whose
    inner tokens are masked, drawn from the pool or deleted; [CLS]/[SEP] stay; the same
    seed gives the same copies."""
    from data.input import perturb_examples, read_split, token_pool

    train = read_split(trained_run / "prepare", "train", with_text=False)
    original = list(train.as_numpy_iterator())
    pool = token_pool(train)
    assert len(pool) == sum(len(e["input_ids"]) - 2 for e in original)
    mask_id = 5  # not a token of the easy data

    def perturbed(fraction, rate, seed):
        return list(perturb_examples(train, pool, mask_id, fraction, rate, seed)
                    .as_numpy_iterator())

    half = perturbed(0.5, 0.3, seed=1)
    chosen = [e["label"] == -1 for e in half]
    assert 0.4 < np.mean(chosen) < 0.6
    for copy, source, is_copy in zip(half, original, chosen):
        if not is_copy:
            assert copy["label"] == source["label"]
            np.testing.assert_array_equal(copy["input_ids"], source["input_ids"])
        ids = copy["input_ids"]
        assert ids[0] == source["input_ids"][0] and ids[-1] == source["input_ids"][-1]
    changed = [not np.array_equal(c["input_ids"], s["input_ids"])
               for c, s, k in zip(half, original, chosen) if k]
    assert np.mean(changed) > 0.8
    again = perturbed(0.5, 0.3, seed=1)
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(half, again))
    other = perturbed(0.5, 0.3, seed=2)
    assert not all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(half, other))
    assert all(e["label"] >= 0 for e in perturbed(0.0, 0.3, seed=1))

    # Every inner token changed: a third masked, a third deleted, a third from the pool.
    inner = sum(len(e["input_ids"]) - 2 for e in original)
    every = perturbed(1.0, 1.0, seed=3)
    kept = np.concatenate([e["input_ids"][1:-1] for e in every])
    assert all(e["label"] == -1 for e in every)
    assert 0.28 < 1 - len(kept) / inner < 0.38  # deleted
    assert 0.28 < np.mean(kept == mask_id) * len(kept) / inner < 0.38
    assert set(kept[kept != mask_id]) <= set(pool)


def test_unlabelled_copies_learn_from_the_teacher_alone(trained_run):
    """An example labelled -1 has no cross-entropy term and no place in the accuracy:
    with the teacher equal to the student (KL 0), its loss is 0 and a labelled
    example's is (1 - w) * cross-entropy."""
    import dataclasses

    from data.input import batch_examples, read_split
    from models.bert import BertArchitecture, build_classifier

    teacher, meta = load_model(trained_run / "finetune")
    student = build_classifier(  # without dropout, so that its training logits are the teacher's
        dataclasses.replace(BertArchitecture(**meta["architecture"]), dropout=0.0), 2,
        pooling=meta["pooling"], head_dropout=0.0)
    student.set_weights(teacher.get_weights())
    features, labels = next(iter(batch_examples(
        read_split(trained_run / "prepare", "train", with_text=False), 16)))
    labels = labels.numpy()
    marked = np.where(np.arange(16) % 3 == 0, -1, labels).astype(np.int32)
    logits = student(features, training=False).numpy()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=keras.losses.Reduction.NONE)
    cross_entropy = loss_fn(labels, logits).numpy()
    known = marked >= 0
    expected_loss = np.mean(np.where(known, 0.25 * cross_entropy, 0.0))
    expected_accuracy = np.mean((logits.argmax(-1) == labels)[known])
    metrics = (keras.metrics.Mean(), keras.metrics.SparseCategoricalAccuracy())
    step = make_train_step(tf.distribute.get_strategy(), student, keras.optimizers.SGD(0.0),
                           loss_fn, metrics, teacher=teacher, distill_weight=0.75)
    step(features, tf.constant(marked))
    assert float(metrics[0].result()) == pytest.approx(expected_loss, rel=1e-4, abs=1e-6)
    assert float(metrics[1].result()) == pytest.approx(expected_accuracy)


def test_finetune_cannot_distill(capsys, tmp_path):
    assert run_stage("finetune", tmp_path, "finetune.distill_weight=0.5") == 2
    assert "fine-tuning has no teacher" in capsys.readouterr().err
    assert run_stage("finetune", tmp_path, "finetune.distill_hidden_weight=1") == 2
    assert "'finetune.distill_hidden_weight'" in capsys.readouterr().err
    assert run_stage("prune", tmp_path, "prune.train.augment_fraction=0.5",
                     "prune.train.distill_weight=0") == 2
    assert "they need distill_weight > 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_training_seed_repeats_a_stage_with_other_draws(trained_run, tmp_path, easy_data):
    """finetune.seed (and prune/quantize.train.seed) replaces the pipeline seed for one
    training: the same value reproduces it exactly, another value draws differently."""
    weights = {}
    for name, seed in (("default", None), ("same", 0), ("other", 7)):  # tiny.yaml: seed 0
        run_dir = tmp_path / name
        shutil.copytree(trained_run / "prepare", run_dir / "prepare")
        extra = [] if seed is None else [f"finetune.seed={seed}"]
        assert run_stage("finetune", run_dir, *easy_data, "finetune.max_steps=3",
                         *extra) == 0
        weights[name] = load_model(run_dir / "finetune")[0].get_weights()
    for a, b in zip(weights["default"], weights["same"]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(weights["default"], weights["other"]))


def test_weight_average_by_hand():
    from models.optimization import WeightAverage

    v = tf.Variable([1.0, -2.0])
    average = WeightAverage([v], decay=0.6)
    assert not average.started
    expected = None
    for n, value in enumerate(([1.0, -2.0], [3.0, 0.0], [5.0, 4.0], [-1.0, 1.0])):
        v.assign(value)
        average.update()
        d = min(0.6, n / (n + 1))  # the mean of the first 2, then exponential
        expected = np.array(value) if expected is None else \
            d * expected + (1 - d) * np.array(value)
    assert average.started and int(average.updates.numpy()) == 4
    np.testing.assert_allclose(average.average[0].numpy(), expected, rtol=1e-6)
    average.swap()
    np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(average.average[0].numpy(), [-1.0, 1.0])
    average.swap()
    np.testing.assert_allclose(v.numpy(), [-1.0, 1.0])
