"""Tests for the BERT encoder/classifier (models.bert) and checkpoint import (models.checkpoints).

Reference outputs come from keras-hub's `BertBackbone` (Keras 3, same process). keras-hub
uses the tanh-approximate GELU everywhere, also for Hugging Face checkpoints trained with
the exact erf GELU; where we compare against an exact-GELU model we switch keras-hub's
feed-forward activation to the exact GELU (`_exact_gelu`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from safetensors.numpy import save_file

from models.bert import (
    BertArchitecture,
    BertSelfAttention,
    build_classifier,
    build_encoder,
)
from models.checkpoints import CheckpointError, architecture, hf_state_dict, load_weights
from pipeline.config import ModelConfig

TINY = BertArchitecture(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2,
                        intermediate_size=64, max_positions=64, type_vocab_size=2, dropout=0.0)
TINY_HF_CONFIG = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32,
                  "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                  "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_act": "gelu",
                  "layer_norm_eps": 1e-12}
SENTENCES = ["A gripping, beautifully shot film.",
             "The plot never quite comes together, and the actors seem bored throughout.",
             "Meh."]


# === Helpers ===


def make_batch(lengths=(12, 7, 3), seq: int | None = None, seed: int = 0,
               vocab: int = 100) -> dict[str, np.ndarray]:
    """Random ids padded to `seq` (default: the longest), two segments, [CLS]-like id 1."""
    rng = np.random.default_rng(seed)
    seq = seq or max(lengths)
    mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype("int32")
    ids = rng.integers(2, vocab, (len(lengths), seq)).astype("int32") * mask
    ids[:, 0] = 1
    segments = ((np.arange(seq)[None, :] >= 4) * mask).astype("int32")
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments}


def to_keras_hub(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"token_ids": batch["input_ids"], "padding_mask": batch["input_mask"],
            "segment_ids": batch["segment_ids"]}


def run(model: keras.Model, batch: dict[str, np.ndarray]):
    out = model(batch, training=False)
    if isinstance(out, dict):
        return {key: value.numpy() for key, value in out.items()}
    return out.numpy()


def real_max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Max abs difference over real-token positions of [batch, seq, hidden] outputs."""
    return float(np.abs(np.asarray(a) - np.asarray(b))[mask.astype(bool)].max())


def _exact_gelu(backbone) -> None:
    import keras as keras3

    for i in range(backbone.num_layers):
        dense = backbone.get_layer(f"transformer_layer_{i}")._feedforward_intermediate_dense
        dense.activation = keras3.activations.gelu  # approximate=False


def write_hf_folder(folder: Path, tensors: dict[str, np.ndarray], config: dict | None = None
                    ) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or TINY_HF_CONFIG))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


# === Fixtures ===


@pytest.fixture(scope="module")
def tiny_keras_hub(tmp_path_factory):
    """A random tiny keras-hub BertBackbone and its local preset folder."""
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=64, num_segments=2)
    folder = tmp_path_factory.mktemp("keras_hub_preset")
    backbone.save_to_preset(str(folder))
    return backbone, folder


@pytest.fixture(scope="module")
def tiny_encoder():
    keras.utils.set_random_seed(0)
    return build_encoder(TINY)


@pytest.fixture(scope="module")
def tiny_hf_folder(tmp_path_factory, tiny_encoder):
    """A Hugging Face style folder written from `tiny_encoder`'s weights."""
    return write_hf_folder(tmp_path_factory.mktemp("hf") / "tiny", hf_state_dict(tiny_encoder))


# === Parity with keras-hub ===


def test_tiny_keras_hub_preset_parity(tiny_keras_hub):
    backbone, folder = tiny_keras_hub
    cfg = ModelConfig(checkpoint=f"keras_hub:{folder}", dropout=0.0)
    arch = architecture(cfg)
    assert arch == dataclasses.replace(TINY, hidden_act="gelu_approximate")
    encoder = build_encoder(arch)
    report = load_weights(encoder, cfg)
    assert report["format"] == "keras_hub"
    assert report["tensors_loaded"] == 5 + 2 * 16 + 2
    assert report["pooler"] == "loaded"

    batch = make_batch()
    ours = run(encoder, batch)
    theirs = backbone.predict_on_batch(to_keras_hub(batch))
    # Both mask keys only, so padded positions get (meaningless) outputs in both models;
    # only real tokens matter downstream, and only they are compared.
    assert real_max_diff(ours["sequence_output"], theirs["sequence_output"],
                         batch["input_mask"]) < 1e-4
    np.testing.assert_allclose(ours["pooled_output"], theirs["pooled_output"], atol=1e-4)


def test_minilm_checkpoint_parity(minilm_dir):
    import keras_hub

    cfg = ModelConfig(checkpoint="builtin", dropout=0.0)
    arch = architecture(cfg)
    assert (arch.num_layers, arch.hidden_size, arch.num_heads, arch.hidden_act) == \
        (6, 384, 12, "gelu")
    encoder = build_encoder(arch)
    report = load_weights(encoder, cfg)
    assert report["tensors_loaded"] == 5 + 6 * 16 + 2
    assert report["pooler"] == "loaded"
    assert report["tensors_ignored"] == ["embeddings.position_ids"]

    # keras-hub converts the local HF folder itself (config.json, model.safetensors).
    reference = keras_hub.models.BertBackbone.from_preset(str(minilm_dir))
    _exact_gelu(reference)  # HF "gelu" is the exact erf GELU
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=str(minilm_dir / "vocab.txt"),
                                               lowercase=True)
    rows = [[101, *np.asarray(tokenizer(text)).tolist(), 102] for text in SENTENCES]
    ids = np.zeros((len(rows), max(map(len, rows))), "int32")
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    batch = {"input_ids": ids, "input_mask": (ids > 0).astype("int32"),
             "segment_ids": np.zeros_like(ids)}

    ours = run(encoder, batch)
    theirs = reference.predict_on_batch(to_keras_hub(batch))
    assert real_max_diff(ours["sequence_output"], theirs["sequence_output"],
                         batch["input_mask"]) < 1e-4
    np.testing.assert_allclose(ours["pooled_output"], theirs["pooled_output"], atol=1e-4)


# === Attention mask ===


def test_bounded_mask_matches_standard_masking():
    keras.utils.set_random_seed(1)
    batch = make_batch(lengths=(9, 4, 1), seq=9)
    x = tf.random.normal((3, 9, 32))
    keep = tf.cast(batch["input_mask"][:, None, :], tf.bool)

    bounded = BertSelfAttention(num_heads=2, key_dim=16, mask_value=-100.0)
    standard = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)  # adds -1e9
    bounded(x, value=x, attention_mask=keep)
    standard(x, value=x, attention_mask=keep)
    standard.set_weights(bounded.get_weights())
    diff = real_max_diff(bounded(x, value=x, attention_mask=keep),
                         standard(x, value=x, attention_mask=keep), batch["input_mask"])
    assert diff < 1e-5

    # Whole encoder: mask_value -100 vs Keras' -1e9.
    encoder = build_encoder(TINY, mask_value=-100.0)
    reference = build_encoder(TINY, mask_value=-1e9)
    reference.set_weights(encoder.get_weights())
    assert real_max_diff(run(encoder, batch)["sequence_output"],
                         run(reference, batch)["sequence_output"], batch["input_mask"]) < 1e-5


def test_padding_does_not_influence_real_tokens(tiny_encoder):
    batch = make_batch()
    changed = {key: value.copy() for key, value in batch.items()}
    pad = batch["input_mask"] == 0
    changed["input_ids"][pad] = 77
    changed["segment_ids"][pad] = 1
    assert real_max_diff(run(tiny_encoder, batch)["sequence_output"],
                         run(tiny_encoder, changed)["sequence_output"],
                         batch["input_mask"]) < 1e-5


def test_mask_value_must_be_negative():
    with pytest.raises(ValueError, match="mask_value"):
        BertSelfAttention(num_heads=2, key_dim=16, mask_value=0.0)


# === Classifier ===


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_ignores_appended_padding(pooling):
    model = build_classifier(TINY, num_classes=3, pooling=pooling)
    batch = make_batch(lengths=(8, 5, 2), seq=8)
    logits = run(model, batch)
    assert logits.shape == (3, 3) and logits.dtype == np.float32
    padded = {key: np.pad(value, ((0, 0), (0, 6))) for key, value in batch.items()}
    np.testing.assert_allclose(run(model, padded), logits, atol=1e-5)


def test_classifier_layer_names():
    names = [layer.name for layer in build_classifier(TINY, 2, pooling="cls").layers]
    for name in ("embeddings_word", "embeddings_position", "embeddings_type",
                 "attention_mask", "layer_0_attention", "layer_1_ffn_in", "layer_1_ffn_out",
                 "pooler", "head_dropout", "classifier"):
        assert name in names
    assert "pooler" not in [layer.name for layer in build_classifier(TINY, 2).layers]


def test_dynamic_sequence_length():
    model = build_classifier(TINY, num_classes=2)
    for seq in (8, 24):
        assert run(model, make_batch(lengths=(seq, 3), seq=seq)).shape == (2, 2)


def test_mixed_precision_logits_are_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier(TINY, num_classes=2)
        logits = model(make_batch(), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()


def test_tflite_float_conversion_builtin_ops_dynamic_length():
    from ai_edge_litert.interpreter import Interpreter

    model = build_classifier(TINY, num_classes=2)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex
    runner = Interpreter(model_content=converter.convert()).get_signature_runner()
    for seq in (8, 24):
        batch = make_batch(lengths=(seq, 3), seq=seq)
        (logits,) = runner(**batch).values()
        np.testing.assert_allclose(logits, run(model, batch), atol=1e-5)


# === Serialization ===


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_serialization_round_trip(pooling, tmp_path):
    model = build_classifier(TINY, num_classes=3, pooling=pooling)
    batch = make_batch()
    expected = run(model, batch)

    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_array_equal(run(rebuilt, batch), expected)

    cloned = keras.models.clone_model(model)
    cloned.set_weights(model.get_weights())
    np.testing.assert_array_equal(run(cloned, batch), expected)

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(run(loaded, batch), expected)
    attention = loaded.get_layer("layer_0_attention")
    assert isinstance(attention, BertSelfAttention) and attention.mask_value == -100.0


def test_artifact_loader_matches_keras_and_refuses_broken_files(tmp_path):
    """`models.artifact.load_model` (weights copied out of the zip first) gives Keras'
    own loader's model: the same config, weights and outputs; a truncated or foreign
    model.keras is one ArtifactError naming the file."""
    from models.artifact import ArtifactError, load_model

    model = build_classifier(TINY, num_classes=3, pooling="mean")
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    model.save(tmp_path / "model.keras")
    ours, meta = load_model(tmp_path)
    theirs = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert ours.get_config() == theirs.get_config() and meta["labels"] == ["a", "b", "c"]
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_array_equal(a, b)
    batch = make_batch()
    np.testing.assert_array_equal(run(ours, batch), run(model, batch))

    data = (tmp_path / "model.keras").read_bytes()
    for broken in (data[: len(data) // 2], b"not a zip file"):
        (tmp_path / "model.keras").write_bytes(broken)
        with pytest.raises(ArtifactError, match="model.keras cannot be loaded"):
            load_model(tmp_path)


# === tfmot ===


def test_prune_low_magnitude_wraps_dense_and_attention():
    keras.utils.set_random_seed(2)
    model = build_classifier(dataclasses.replace(TINY, dropout=0.1), num_classes=3)
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1)

    def wrap(layer):
        if isinstance(layer, (keras.layers.Dense, keras.layers.MultiHeadAttention)):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = keras.models.clone_model(model, clone_function=wrap)
    wrapped = sorted(layer.layer.name for layer in pruned.layers
                     if type(layer).__name__ == "PruneLowMagnitude")
    assert wrapped == sorted(["classifier"] + [f"layer_{i}_{part}" for i in range(2)
                                               for part in ("attention", "ffn_in", "ffn_out")])
    pruned.compile(optimizer=keras.optimizers.Adam(1e-3),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batch = make_batch(lengths=(12, 7, 3, 5))
    pruned.fit(batch, np.array([0, 1, 2, 1]), epochs=2, batch_size=4, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])

    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    kernels = {w.name: w.numpy() for w in stripped.weights if "kernel" in w.name}
    assert len(kernels) == 2 * (4 + 2) + 1  # q/k/v/o + ffn_in/out per layer, classifier
    for name, kernel in kernels.items():
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02), name
    np.testing.assert_allclose(run(stripped, batch), run(pruned, batch), atol=1e-6)


# === Checkpoint import ===


def test_hf_folder_round_trip_and_naming_variants(tiny_encoder, tiny_hf_folder, tmp_path):
    batch = make_batch()
    expected = run(tiny_encoder, batch)["sequence_output"]
    cfg = ModelConfig(checkpoint=str(tiny_hf_folder), dropout=0.0)
    assert architecture(cfg) == TINY
    encoder = build_encoder(architecture(cfg))
    load_weights(encoder, cfg)
    np.testing.assert_array_equal(run(encoder, batch)["sequence_output"], expected)

    # BertFor* checkpoints: `bert.` prefix, old gamma/beta names, heads and no pooler.
    tensors = {f"bert.{key}".replace("LayerNorm.weight", "LayerNorm.gamma")
               .replace("LayerNorm.bias", "LayerNorm.beta"): value
               for key, value in hf_state_dict(tiny_encoder).items()
               if not key.startswith("pooler.")}
    tensors["cls.predictions.bias"] = np.zeros(100, "float32")
    folder = write_hf_folder(tmp_path / "prefixed", tensors)
    classifier = build_classifier(TINY, num_classes=2, pooling="cls")
    report = load_weights(classifier, ModelConfig(checkpoint=str(folder)))
    assert report["pooler"] == "not in checkpoint: random init"
    assert report["classifier"] == "random init"
    assert report["tensors_ignored"] == ["cls.predictions.bias"]
    assert report["tensors_loaded"] == 5 + 2 * 16


def _tampered(tiny_encoder, tmp_path, change) -> ModelConfig:
    tensors = hf_state_dict(tiny_encoder)
    change(tensors)
    return ModelConfig(checkpoint=str(write_hf_folder(tmp_path / "tampered", tensors)))


def test_load_weights_wrong_shape(tiny_encoder, tmp_path):
    key = "encoder.layer.1.intermediate.dense.weight"

    def change(tensors):
        tensors[key] = np.zeros((48, 32), "float32")

    cfg = _tampered(tiny_encoder, tmp_path, change)
    with pytest.raises(CheckpointError, match=rf"'{key}' has shape \(48, 32\), "
                                              r"expected \(64, 32\)"):
        load_weights(build_encoder(TINY), cfg)


def test_load_weights_missing_tensor(tiny_encoder, tmp_path):
    key = "encoder.layer.0.attention.self.key.bias"
    cfg = _tampered(tiny_encoder, tmp_path, lambda tensors: tensors.pop(key))
    target = build_encoder(TINY)
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(CheckpointError, match=rf"'{key}' is missing \(expected shape \(32,\)"):
        load_weights(target, cfg)
    for old, new in zip(before, target.get_weights()):  # nothing assigned
        np.testing.assert_array_equal(old, new)


def test_load_weights_layer_count_mismatch(tiny_hf_folder):
    model = build_encoder(dataclasses.replace(TINY, num_layers=1))
    with pytest.raises(CheckpointError, match="2 transformer layers, model 'bert_encoder' has 1"):
        load_weights(model, ModelConfig(checkpoint=str(tiny_hf_folder)))


def test_not_bert_and_corrupt_checkpoints(tiny_hf_folder, tmp_path):
    folder = tmp_path / "roberta"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY_HF_CONFIG, "model_type": "roberta"}))
    cfg = ModelConfig(checkpoint=str(folder))
    with pytest.raises(CheckpointError, match="model_type is 'roberta'"):
        architecture(cfg)
    with pytest.raises(CheckpointError, match="model_type is 'roberta'"):
        load_weights(build_encoder(TINY), cfg)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors"):
        load_weights(build_encoder(TINY), ModelConfig(checkpoint=str(corrupt)))

    approx = tmp_path / "gelu_new"
    approx.mkdir()
    (approx / "config.json").write_text(json.dumps({**TINY_HF_CONFIG, "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match="hidden_act 'relu' is not supported"):
        architecture(ModelConfig(checkpoint=str(approx)))


def test_random_architecture_and_noop_load():
    cfg = ModelConfig(checkpoint="random", hidden_size=32, num_layers=2, num_heads=2,
                      intermediate_size=64, max_positions=64, dropout=0.2)
    arch = architecture(cfg)
    assert arch == dataclasses.replace(TINY, vocab_size=30522, dropout=0.2)
    report = load_weights(build_encoder(dataclasses.replace(arch, vocab_size=100)), cfg)
    assert report["source"] == "random" and report["tensors_loaded"] == 0


def test_builtin_architecture_takes_dropout_from_config():
    arch = architecture(ModelConfig(checkpoint="builtin", dropout=0.05))
    assert arch == BertArchitecture(vocab_size=30522, hidden_size=384, num_layers=6,
                                    num_heads=12, intermediate_size=1536, max_positions=512,
                                    type_vocab_size=2, layer_norm_eps=1e-12, dropout=0.05)
