"""Tests for shape pruning (models.shape_pruning), its importance scores
(models.shape_importance) and the id remap layer (models.id_remap), on tiny models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models.bert import BertArchitecture, build_classifier
from models.id_remap import IdRemap
from models.shape_importance import head_importance, neuron_importance
from models.shape_pruning import (
    evenly_spaced_layers,
    flops_per_example,
    kept_vocabulary,
    parameter_breakdown,
    prune_shape,
    student_architecture,
)

TEACHER = BertArchitecture(vocab_size=100, hidden_size=32, num_layers=3, num_heads=4,
                           intermediate_size=64, max_positions=64, type_vocab_size=2,
                           dropout=0.0)
UNK = 3
SIGNAL = (10, 11)  # the task: which of these two ids a row contains


# === Helpers ===


def make_batch(size: int = 16, seq: int = 12, seed: int = 0, vocab: int = 100):
    """Random rows ([CLS]-like id 1, ids 12..vocab-1, padding), one SIGNAL id each; the
    label says which."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, seq + 1, size)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype("int32")
    ids = rng.integers(12, vocab, (size, seq)).astype("int32")
    labels = rng.integers(0, 2, size).astype("int32")
    ids[np.arange(size), rng.integers(1, lengths)] = np.array(SIGNAL)[labels]
    ids[:, 0] = 1
    ids *= mask
    segments = ((np.arange(seq)[None, :] >= 3) * mask).astype("int32")
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments}, labels


def run(model, features) -> np.ndarray:
    return model(features, training=False).numpy()


def loss(model, batches) -> float:
    fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return float(np.mean([fn(labels, model(features, training=False)).numpy()
                          for features, labels in batches]))


def count_params(vocab, hidden, layers, heads, head, ffn, positions=64, types=2,
                 classes=2, input_vocab=None) -> int:
    """Parameters of a mean-pooling classifier, from the shapes."""
    embeddings = (vocab + positions + types) * hidden + 2 * hidden
    attention = 3 * (hidden * heads * head + heads * head) + heads * head * hidden + hidden
    layer = attention + 2 * hidden + (hidden * ffn + ffn) + (ffn * hidden + hidden) + 2 * hidden
    return (embeddings + layers * layer + hidden * classes + classes
            + (input_vocab or 0))


# === Fixtures ===


@pytest.fixture(scope="module")
def teacher():
    """A tiny classifier trained a few steps on the SIGNAL task (mean pooling)."""
    keras.utils.set_random_seed(0)
    model = build_classifier(TEACHER, num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    features, labels = make_batch(size=256, seed=1)
    model.fit(features, labels, batch_size=32, epochs=4, verbose=0)
    return model


@pytest.fixture(scope="module")
def batches():
    return [make_batch(seed=seed) for seed in (10, 11, 12)]


# === Identity and shapes ===


def test_nothing_removed_gives_the_teacher(teacher, batches):
    student = prune_shape(teacher, TEACHER, keep_tokens=np.arange(100), unk_id=UNK)
    assert student_architecture(student, TEACHER) == BertArchitecture(
        **{**TEACHER.__dict__, "input_vocab_size": 100})
    for features, _ in batches:
        np.testing.assert_allclose(run(student, features), run(teacher, features), atol=1e-5)
    plain = prune_shape(teacher, TEACHER)  # no remap layer at all
    assert "embeddings_remap" not in [layer.name for layer in plain.layers]
    np.testing.assert_allclose(run(plain, batches[0][0]), run(teacher, batches[0][0]),
                               atol=1e-5)


def test_parameter_counts_follow_the_config(teacher, batches):
    assert teacher.count_params() == count_params(100, 32, 3, 4, 8, 64)
    heads = np.arange(12, dtype="float32").reshape(3, 4)
    neurons = np.arange(192, dtype="float32").reshape(3, 64)
    student = prune_shape(teacher, TEACHER, keep_layers=[0, 2], heads_per_layer=2,
                          intermediate_size=24, keep_tokens=np.arange(40), unk_id=UNK,
                          head_scores=heads, neuron_scores=neurons)
    arch = student_architecture(student, TEACHER)
    assert (arch.num_layers, arch.num_heads, arch.head_size, arch.intermediate_size,
            arch.vocab_size, arch.input_vocab_size) == (2, 2, 8, 24, 40, 100)
    # The remap table (100 int32 ids) is a non-trainable weight.
    assert student.count_params() == count_params(40, 32, 2, 2, 8, 24, input_vocab=100)
    trainable = sum(int(np.prod(w.shape)) for w in student.trainable_weights)
    assert trainable == count_params(40, 32, 2, 2, 8, 24)
    # The highest scores are the last units: heads 2, 3 and neurons 40..63 of layer 2.
    np.testing.assert_array_equal(
        student.get_layer("layer_1_attention")._output_dense.kernel.numpy(),
        teacher.get_layer("layer_2_attention")._output_dense.kernel.numpy()[2:])
    np.testing.assert_array_equal(
        student.get_layer("layer_1_ffn_in").kernel.numpy(),
        teacher.get_layer("layer_2_ffn_in").kernel.numpy()[:, 40:])
    out = run(student, batches[0][0])
    assert out.shape == (16, 2) and np.isfinite(out).all()


def test_bad_arguments_say_what_to_fix(teacher):
    with pytest.raises(ValueError, match="needs head_scores"):
        prune_shape(teacher, TEACHER, heads_per_layer=2)
    with pytest.raises(ValueError, match=r"neuron_scores has shape \(2, 64\)"):
        prune_shape(teacher, TEACHER, intermediate_size=8, neuron_scores=np.ones((2, 64)))
    with pytest.raises(ValueError, match="keep_layers"):
        prune_shape(teacher, TEACHER, keep_layers=[0, 3])
    with pytest.raises(ValueError, match="unk_id"):
        prune_shape(teacher, TEACHER, keep_tokens=np.arange(10))
    with pytest.raises(ValueError, match="divisible by num_heads 3"):
        BertArchitecture(100, 32, 1, 3, 64, 64, 2)


# === Vocabulary remap ===


def test_remap_keeps_rows_and_sends_removed_ids_to_unk(teacher):
    keep = np.array([0, 1, 2, *SIGNAL, *range(50, 100)])  # [UNK] (3) is added
    student = prune_shape(teacher, TEACHER, keep_tokens=keep, unk_id=UNK)
    table = student.get_layer("embeddings_remap").table.numpy()
    ours = student.get_layer("embeddings_word").embeddings.numpy()
    theirs = teacher.get_layer("embeddings_word").embeddings.numpy()
    assert ours.shape == (len(keep) + 1, 32)
    np.testing.assert_array_equal(ours[table[keep]], theirs[keep])
    removed = np.setdiff1d(np.arange(100), np.append(keep, UNK))
    np.testing.assert_array_equal(ours[table[removed]], np.repeat(theirs[[UNK]], len(removed), 0))

    # Rows with kept ids only: the teacher's outputs. With removed ids: the teacher's
    # outputs on the same rows with those ids replaced by [UNK].
    features, _ = make_batch(size=8, seed=3)
    kept_only = {**features, "input_ids": np.where(features["input_ids"] >= 12,
                                                   features["input_ids"] % 50 + 50,
                                                   features["input_ids"])}
    np.testing.assert_allclose(run(student, kept_only), run(teacher, kept_only), atol=1e-5)
    ids = features["input_ids"]
    as_unk = {**features, "input_ids": np.where(np.isin(ids, removed), UNK, ids)}
    assert (as_unk["input_ids"] != ids).any()
    np.testing.assert_allclose(run(student, features), run(teacher, as_unk), atol=1e-5)


def test_remap_of_a_remapped_student_composes(teacher):
    first = prune_shape(teacher, TEACHER, keep_tokens=np.arange(60), unk_id=UNK)
    second = prune_shape(first, student_architecture(first, TEACHER),
                         keep_tokens=np.arange(30), unk_id=UNK)
    direct = prune_shape(teacher, TEACHER, keep_tokens=np.arange(30), unk_id=UNK)
    features, _ = make_batch(seed=4)
    np.testing.assert_allclose(run(second, features), run(direct, features), atol=1e-6)


# === Importance ===


def test_importance_ranks_what_pruning_costs(teacher, batches):
    heads = head_importance(teacher, batches)
    neurons = neuron_importance(teacher, batches)
    assert heads.shape == (3, 4) and neurons.shape == (3, 64)
    assert (heads >= 0).all() and (heads > 0).any() and (neurons > 0).any()
    base = loss(teacher, batches)

    def change(**kwargs) -> float:
        return abs(loss(prune_shape(teacher, TEACHER, **kwargs), batches) - base)

    # One head removed from every layer: the least important vs the most important.
    # (Measured: 1.1e-4 vs 6.7e-4 for heads, 2.8e-5 vs 1.0e-4 for neurons.)
    least = change(heads_per_layer=3, head_scores=heads)
    most = change(heads_per_layer=3, head_scores=-heads)
    assert 2 * least < most, (least, most)
    # A quarter of the FFN neurons removed.
    least = change(intermediate_size=48, neuron_scores=neurons)
    most = change(intermediate_size=48, neuron_scores=-neurons)
    assert 2 * least < most, (least, most)


def test_importance_needs_labelled_batches(teacher, batches):
    with pytest.raises(ValueError, match=r"\(features, labels\)"):
        head_importance(teacher, [batches[0][0]])


# === Serialization and export ===


def test_student_saves_loads_and_converts_to_tflite(teacher, tmp_path):
    from export.flatbuffer import op_census
    from export.runtime import run_tflite
    from export.tflite import to_tflite
    from models.artifact import load_model, save_model

    heads = np.arange(12, dtype="float32").reshape(3, 4)
    student = prune_shape(teacher, TEACHER, keep_layers=[1, 2], heads_per_layer=3,
                          keep_tokens=np.arange(70), unk_id=UNK, head_scores=heads)
    features, _ = make_batch(size=4, seq=16, seed=5)
    expected = run(student, features)

    rebuilt = keras.Model.from_config(student.get_config())
    rebuilt.set_weights(student.get_weights())
    np.testing.assert_array_equal(run(rebuilt, features), expected)

    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    for name in ("labels.txt", "vocab.txt", "tokenizer.json"):
        (tokenizer / name).write_text("x\n")
    save_model(student, tmp_path, {"made_by": "test"}, tokenizer)
    loaded, meta = load_model(tmp_path)
    assert isinstance(loaded.get_layer("embeddings_remap"), IdRemap)
    np.testing.assert_array_equal(run(loaded, features), expected)

    flat = to_tflite(student, "cpu", max_seq_length=16)
    census = op_census(flat)
    assert census["flex_ops"] == [] and census["custom_ops"] == []
    assert "GATHER int32,int32->int32" in census["ops"]  # the remap (shapes use it too)
    assert (features["input_ids"] >= 70).any()  # removed ids go through the remap
    probabilities = run_tflite(flat, [features])
    assert probabilities.shape == (4, 2)
    np.testing.assert_allclose(probabilities, tf.nn.softmax(expected).numpy(), atol=0.01)


def test_student_takes_quantization_aware_training(teacher):
    from models.quantization import quantize_for_training

    student = prune_shape(teacher, TEACHER, keep_tokens=np.arange(70), unk_id=UNK)
    features, labels = make_batch(size=8, seed=6)
    qat = quantize_for_training(student, calibration=[(features, labels)])
    assert type(qat.get_layer("embeddings_remap")) is IdRemap  # left unwrapped, in int32
    np.testing.assert_array_equal(qat.get_layer("embeddings_remap").table.numpy(),
                                  student.get_layer("embeddings_remap").table.numpy())
    # Measured 0.003 on a random-init student.
    np.testing.assert_allclose(run(qat, features), run(student, features), atol=0.02)


# === What the distill stage plans and reports ===


def test_evenly_spaced_layers_end_with_the_last():
    assert evenly_spaced_layers(6, 3) == [1, 3, 5]
    assert evenly_spaced_layers(6, 2) == [2, 5]
    assert evenly_spaced_layers(6, 6) == list(range(6))
    assert evenly_spaced_layers(12, 4) == [2, 5, 8, 11]
    for total, keep in ((6, 0), (6, 7)):
        with pytest.raises(ValueError, match="cannot keep"):
            evenly_spaced_layers(total, keep)


def test_kept_vocabulary_counts_specials_and_extras():
    counts = np.array([0, 0, 5, 1, 0, 2, 0, 0])
    assert kept_vocabulary(counts, [0]).tolist() == [0, 2, 3, 5]
    assert kept_vocabulary(counts, [0], min_count=2).tolist() == [0, 2, 5]
    # extra: the lowest ids not kept otherwise
    assert kept_vocabulary(counts, [0], min_count=2, extra=2).tolist() == [0, 1, 2, 3, 5]
    assert kept_vocabulary(counts, [7, 6], extra=0).tolist() == [2, 3, 5, 6, 7]


def test_parameter_breakdown_adds_up(teacher):
    student = prune_shape(teacher, TEACHER, keep_layers=[1], heads_per_layer=2,
                          intermediate_size=16, keep_tokens=np.arange(40), unk_id=UNK,
                          head_scores=np.ones((3, 4)), neuron_scores=np.ones((3, 64)))
    parts = parameter_breakdown(student)
    assert parts["word_embeddings"] == 40 * 32
    assert parts["other_embeddings"] == (64 + 2) * 32 + 2 * 32
    assert parts["head"] == 32 * 2 + 2
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    # count_params also counts the remap table (non-trainable ints), one per input id
    assert parts["total"] == student.count_params() - 100
    assert parameter_breakdown(teacher)["total"] == teacher.count_params()


def test_flops_follow_the_shapes():
    one = dataclasses.replace(TEACHER, num_layers=1)
    length, hidden, width, ffn = 10, 32, 32, 64
    per_layer = (2 * length * hidden * width * 4 + 4 * length * length * width
                 + 4 * length * hidden * ffn)
    assert flops_per_example(one, length, 2) == per_layer + 2 * hidden * 2
    assert flops_per_example(TEACHER, length, 2) == 3 * per_layer + 2 * hidden * 2
    assert flops_per_example(TEACHER, length, 2, pooler=True) == \
        3 * per_layer + 2 * hidden * 2 + 2 * hidden * hidden
    # half the heads (same head size) and half the FFN: every layer term halves
    half = dataclasses.replace(TEACHER, num_heads=2, intermediate_size=32)
    assert flops_per_example(half, length, 2) - 2 * hidden * 2 == \
        (flops_per_example(TEACHER, length, 2) - 2 * hidden * 2) // 2


def test_hidden_distillation_matches_the_layers_a_student_was_cut_from(teacher, batches):
    """A student of teacher layers [0, 2] (nothing else removed): matched with those
    layers, the hidden term is the error of skipping layer 1 only at the second layer;
    matched by index ([0, 1]) it differs; a student of all layers matched with them
    has no loss at all."""
    from models.training import make_train_step

    features, labels = batches[0]
    strategy = tf.distribute.get_strategy()

    def mean_loss(student, teacher_layers):
        mean = keras.metrics.Mean()
        step = make_train_step(strategy, student, keras.optimizers.SGD(0.0),
                               keras.losses.SparseCategoricalCrossentropy(
                                   from_logits=True, reduction="none"),
                               (mean, keras.metrics.SparseCategoricalAccuracy()),
                               teacher=teacher, distill_weight=1.0,
                               distill_hidden_weight=1.0, teacher_layers=teacher_layers)
        step(features, labels)
        return float(mean.result())

    whole = prune_shape(teacher, TEACHER)
    assert mean_loss(whole, [0, 1, 2]) == pytest.approx(0.0, abs=1e-6)
    cut = prune_shape(teacher, TEACHER, keep_layers=[0, 2])
    matched, by_index = mean_loss(cut, [0, 2]), mean_loss(cut, [0, 1])
    assert matched > 1e-4 and by_index > 1e-4 and abs(matched - by_index) > 1e-4
