"""Pruning with tfmot on tiny models: measured sparsity, strip parity, m:n, artifact."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from data.input import batch_examples, read_split
from models import pruning
from models.artifact import load_model
from pipeline.config import PruneConfig
from tests.helpers import PRUNE, TRAINED, manifest, run_stage


def fresh_run(trained_run, tmp_path):
    for stage in ("prepare", "finetune"):
        shutil.copytree(trained_run / stage, tmp_path / stage)
    return tmp_path


def test_prune_stage_reaches_target_sparsity(trained_run, tmp_path, easy_data):
    """(With half of each epoch's examples replaced by perturbed copies that the
    student learns from the fine-tuned model; the quantized_run fixture prunes without.)"""
    run_dir = fresh_run(trained_run, tmp_path)
    assert run_stage("prune", run_dir, *easy_data, *TRAINED, *PRUNE,
                     "prune.train.distill_weight=0.5", "prune.train.augment_fraction=0.5") == 0
    m = manifest(run_dir, "prune")["metrics"]
    names = m["pruned_layers"]
    assert sorted(names) == sorted([f"layer_{i}_{part}" for i in range(2)
                                    for part in ("attention", "ffn_in", "ffn_out")])
    kernels = (run_dir / "prune" / "sparsity.json").read_text()
    model, meta = load_model(run_dir / "prune")
    measured = pruning.kernel_sparsity(model, names)
    assert len(measured) == 12  # q, k, v, o + ffn in/out, in 2 layers
    for name, info in measured.items():
        assert info["sparsity"] == pytest.approx(0.75, abs=0.01), name
        assert name in kernels
    assert any("attention/query" in n for n in measured)
    for layer in ("embeddings_word", "classifier"):
        weights = model.get_layer(layer).get_weights()[0]
        assert np.mean(weights == 0) < 0.01  # left dense
    assert m["sparsity"]["overall"] == pytest.approx(0.75, abs=0.01)
    assert m["size"]["after"]["gzip_bytes"] < m["size"]["before"]["gzip_bytes"]
    assert m["parameters"]["nonzero"] < m["parameters"]["total"]
    assert meta["made_by"] == "prune" and meta["labels"] == ["neg", "pos"]
    # Evaluated like the evaluate stage; the easy task survives 75% sparsity.
    assert m["evaluation"]["accuracy"] >= 0.85
    assert (run_dir / "prune" / "metrics.json").is_file()


def train_wrapped(wrapped, run_dir, steps=3):
    """A few SGD steps of a pruning-wrapped model, driven like the prune stage."""
    features, labels = next(iter(batch_examples(
        read_split(run_dir / "prepare", "train", with_text=False), 16)))
    optimizer = tf.keras.optimizers.SGD(0.01)
    wrapped.optimizer = optimizer
    callback = tfmot.sparsity.keras.UpdatePruningStep()
    callback.set_model(wrapped)
    callback.on_train_begin()
    for _ in range(steps):
        callback.on_train_batch_begin(batch=-1)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                labels, wrapped(features, training=True), from_logits=True))
        grads = tape.gradient(loss, wrapped.trainable_variables)
        optimizer.apply_gradients(zip(grads, wrapped.trainable_variables))
    callback.on_epoch_end(batch=-1)
    return features


def test_stripped_model_predicts_like_the_wrapped_one(trained_run):
    model, _ = load_model(trained_run / "finetune")
    schedule = pruning.make_schedule(PruneConfig(schedule="constant", final_sparsity=0.6,
                                                 frequency=1), total_steps=10)
    wrapped = pruning.wrap_for_pruning(model, schedule, (".*",), ("embeddings_.*",))
    features = train_wrapped(wrapped, trained_run)
    stripped = pruning.strip(wrapped)
    assert not any(type(layer).__name__ == "PruneLowMagnitude" for layer in stripped.layers)
    np.testing.assert_allclose(stripped(features, training=False).numpy(),
                               wrapped(features, training=False).numpy(), atol=1e-5)
    sparsities = pruning.kernel_sparsity(stripped, pruning.select_layers(
        stripped, (".*",), ("embeddings_.*",)))
    assert sparsities["classifier/kernel"]["sparsity"] == pytest.approx(0.6, abs=0.02)
    assert all(v["sparsity"] == pytest.approx(0.6, abs=0.02) for v in sparsities.values())


def test_two_four_sparsity_on_dense_and_clear_error_on_attention(trained_run, tmp_path,
                                                                  easy_data, capsys):
    run_dir = fresh_run(trained_run, tmp_path)
    assert run_stage("prune", run_dir, *easy_data, *TRAINED, *PRUNE,
                     "prune.m_by_n=[2, 4]") == 2
    err = capsys.readouterr().err
    assert "prune.m_by_n 2:4 needs 2-D kernels" in err and "layer_0_attention" in err
    assert not (run_dir / "prune").exists()
    assert run_stage("prune", run_dir, *easy_data, *TRAINED, *PRUNE, "prune.m_by_n=[2, 4]",
                     "prune.exclude=[embeddings_.*, classifier, .*_attention]") == 0
    model, _ = load_model(run_dir / "prune")
    for name in ("layer_0_ffn_in", "layer_1_ffn_out"):
        kernel = model.get_layer(name).get_weights()[0]
        groups = kernel.T.reshape(-1, 4)  # 4 consecutive inputs of each output unit
        assert (np.count_nonzero(groups == 0, axis=1) >= 2).all(), name


def test_selection_errors(trained_run):
    model, _ = load_model(trained_run / "finetune")
    with pytest.raises(Exception, match="select no prunable layer"):
        pruning.select_layers(model, ("nothing",), ())
    assert pruning.select_layers(model, ("layer_1_.*",), ()) == \
        ["layer_1_attention", "layer_1_ffn_in", "layer_1_ffn_out"]


def test_global_allocation_cuts_at_one_magnitude(trained_run):
    model, _ = load_model(trained_run / "finetune")
    names = pruning.select_layers(model, (".*",), ("embeddings_.*", "classifier"))
    small = model.get_layer("layer_0_ffn_out")  # make one layer's weights the smallest
    small.kernel.assign(small.kernel * 0.05)
    kernels = {n: [np.abs(w.numpy()).ravel() for w in pruning.prunable_weights(
        model.get_layer(n))] for n in names}
    sizes = {n: sum(k.size for k in ks) for n, ks in kernels.items()}
    everything = np.concatenate([k for ks in kernels.values() for k in ks])

    uncapped = pruning.global_allocation(model, names, 0.6, cap=0.999)
    threshold = np.quantile(everything, 0.6)
    for name, ks in kernels.items():  # each layer's share below the one global threshold
        below = sum(np.count_nonzero(k < threshold) for k in ks) / sizes[name]
        assert uncapped[name] == pytest.approx(below, abs=2e-3), name
    assert uncapped["layer_0_ffn_out"] > 0.99 and min(uncapped.values()) < 0.6

    capped = pruning.global_allocation(model, names, 0.6, cap=0.9)
    assert capped["layer_0_ffn_out"] == pytest.approx(0.9)
    assert max(capped.values()) <= 0.9
    overall = sum(capped[n] * sizes[n] for n in names) / sum(sizes.values())
    assert overall == pytest.approx(0.6, abs=1e-3)  # the others make up the difference
    assert all(capped[n] >= uncapped[n] for n in names if n != "layer_0_ffn_out")

    # Per-layer schedules reach their own targets.
    cfg = PruneConfig(schedule="constant", frequency=1)
    schedules = {n: pruning.make_schedule(cfg, 10, capped[n]) for n in names}
    wrapped = pruning.wrap_for_pruning(model, schedules, (".*",), ("embeddings_.*", "classifier"))
    train_wrapped(wrapped, trained_run, steps=1)
    measured = pruning.kernel_sparsity(pruning.strip(wrapped), names)
    for kernel, info in measured.items():
        assert info["sparsity"] == pytest.approx(capped[kernel.split("/")[0]], abs=0.01), kernel
    with pytest.raises(ValueError, match="no pruning schedule"):
        pruning.wrap_for_pruning(model, {names[0]: schedules[names[0]]}, (".*",), ())


def test_prune_stage_with_global_allocation(trained_run, tmp_path, easy_data, capsys):
    run_dir = fresh_run(trained_run, tmp_path)
    assert run_stage("prune", run_dir, *easy_data, *TRAINED, *PRUNE, "prune.m_by_n=[2, 4]",
                     "prune.allocation=global") == 2
    assert "prune.allocation" in capsys.readouterr().err
    assert not (run_dir / "prune").exists()
    assert run_stage("prune", run_dir, *easy_data, *TRAINED, *PRUNE,
                     "prune.allocation=global", "prune.train.epochs=1") == 0
    m = manifest(run_dir, "prune")["metrics"]
    targets = m["schedule"]["layer_targets"]
    assert sorted(targets) == sorted(m["pruned_layers"])
    assert m["sparsity"]["allocation"] == "global"
    assert m["sparsity"]["overall"] == pytest.approx(0.75, abs=0.01)
    assert m["sparsity"]["max"] - m["sparsity"]["min"] > 0.02  # not uniform
    model, _ = load_model(run_dir / "prune")
    for kernel, info in pruning.kernel_sparsity(model, m["pruned_layers"]).items():
        assert info["sparsity"] == pytest.approx(targets[kernel.split("/")[0]], abs=0.01)


def test_weight_average_from_the_end_of_the_ramp(trained_run, tmp_path, easy_data):
    """With prune.train.ema_decay the kept weights are the moving average of the steps
    after the sparsity ramp, and they keep every mask."""
    run_dir = fresh_run(trained_run, tmp_path)
    assert run_stage("prune", run_dir, *easy_data, *TRAINED, *PRUNE,
                     "prune.train.ema_decay=0.9", "prune.end_fraction=0.5") == 0
    m = manifest(run_dir, "prune")["metrics"]
    training = m["training"]
    average = training["weight_average"]
    end = m["schedule"]["config"]["end_step"]
    assert average["from_step"] == end > 0
    assert average["updates"] == training["steps"] - end + 1
    for record in training["history"]:
        # Epochs at full sparsity are validated both ways; earlier ones have no average.
        assert ("val_accuracy_raw" in record) == (record["step"] >= end), record
    model, _ = load_model(run_dir / "prune")
    for name, info in pruning.kernel_sparsity(model, m["pruned_layers"]).items():
        assert info["sparsity"] == pytest.approx(0.75, abs=0.01), name
    assert m["evaluation"]["accuracy"] >= 0.85
