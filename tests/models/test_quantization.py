"""Quantization on the tiny trained model: QAT wrappers and training, sparsity through
pruning-preserving QAT, every TFLite variant against the Keras model, op census."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from data.input import batch_examples, read_split, training_sample
from data.tokenizer import read_tokenizer_config
from export.flatbuffer import matmul_weight_sparsity, op_census
from export.op_profile import execution_plan
from export.runtime import run_tflite
from export.targets import INT8_ACTIVATION_VARIANTS, TFLITE_VARIANTS
from export.tflite import QAT_FLOAT_OPS, to_tflite
from models import pruning
from models import quantization as quant
from models.artifact import load_model
from models.bert import (
    BertArchitecture,
    BertSelfAttention,
    build_classifier,
    num_transformer_layers,
)
from pipeline.config import PruneConfig

ATTENTION_KERNELS = ("query", "key", "value", "attention_output")
REPRESENTATIVE_EXAMPLES = 32


@pytest.fixture(scope="module")
def tiny(trained_run):
    """The float model, its sequence length, padded test/train batches, representative
    examples and the float model's test logits."""
    model, meta = load_model(trained_run / "finetune")
    seq_len = read_tokenizer_config(trained_run / "finetune")["max_seq_length"]
    prep = trained_run / "prepare"
    test = list(batch_examples(read_split(prep, "test", with_text=False), 16, pad_to=seq_len))
    train = list(batch_examples(read_split(prep, "train", with_text=False), 16,
                                pad_to=seq_len))

    def representative():
        rows = ({name: value[i:i + 1] for name, value in features.items()}
                for features, _ in train for i in range(features["input_ids"].shape[0]))
        for _, row in zip(range(REPRESENTATIVE_EXAMPLES), rows):
            yield row

    return {"model": model, "meta": meta, "seq_len": seq_len, "prep": prep, "test": test,
            "train": train,
            "representative": representative, "logits": predict(model, test),
            "probabilities": probabilities(model, test)}


def predict(model, batches) -> np.ndarray:
    return np.concatenate([model(features, training=False).numpy()
                           for features, _ in batches])


def probabilities(model, batches) -> np.ndarray:
    """What the converted models return: the softmax of the Keras logits."""
    logits = predict(model, batches)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))


def train_steps(model, batches, steps: int, learning_rate: float = 1e-3) -> float:
    """`steps` Adam steps in a GradientTape loop (as the trainer runs them)."""
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step(features, labels):
        with tf.GradientTape() as tape:
            logits = model(features, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for i in range(steps):
        loss = step(*batches[i % len(batches)])
    return float(loss)


def expected_matmuls(model) -> int:
    """Per layer q, k, v, o, scores, context, ffn_in, ffn_out; plus the head's Dense."""
    heads = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)
             and not layer.name.startswith("layer_")]
    return 8 * num_transformer_layers(model) + len(heads)


def wrapper(model, name):
    return model.get_layer(f"quant_{name}")


# === Quantization-aware training ===


@pytest.fixture(scope="module")
def qat(tiny):
    """A QAT copy of the tiny model (activation ranges calibrated on 2 training batches),
    its test logits before training, its variables, and the loss after 5 steps."""
    model = quant.quantize_for_training(
        tiny["model"], calibration=[features for features, _ in tiny["train"][:2]])
    before = predict(model, tiny["test"])
    variables = {v.name: v.numpy().copy() for v in model.variables}
    loss = train_steps(model, tiny["train"], steps=5)
    return {"model": model, "before": before, "variables": variables, "loss": loss}


def test_qat_quantizes_every_attention_kernel(tiny, qat):
    model = qat["model"]
    for i in range(num_transformer_layers(tiny["model"])):
        layer = wrapper(model, f"layer_{i}_attention")
        assert isinstance(layer.quantize_config, quant.AttentionQuantizeConfig)
        assert layer.quantize_config.get_output_quantizers(layer.layer) == []
        kernels = [(w.name, q, v) for w, q, v in layer._weight_vars]
        assert [name for name, _, _ in kernels] == [
            f"layer_{i}_attention/{part}/kernel:0" for part in ATTENTION_KERNELS]
        for weight, quantizer, variables in layer._weight_vars:
            assert isinstance(quantizer, quant.KernelQuantizer)
            assert quantizer.num_bits == 8 and quantizer.symmetric
            # Fake quantization (training mode: the range follows the kernel): at most
            # 255 levels, within half a level of the kernel.
            fake = quantizer(weight, True, weights=variables).numpy()
            assert len(np.unique(fake)) <= 255
            step = variables["max_var"].numpy() / 127
            assert variables["max_var"].numpy() == pytest.approx(np.abs(weight.numpy()).max())
            assert np.abs(fake - weight.numpy()).max() <= step / 2 + 1e-6
        # The attention internals are fake-quantized too, ranges from calibration.
        internal = layer.layer._internal_quantizers
        assert list(internal) == list(BertSelfAttention.QUANT_POINTS)
        for point, fq in internal.items():
            low, high = fq.variables["min_var"].numpy(), fq.variables["max_var"].numpy()
            assert low <= 0 <= high and high - low > 0, point
        probabilities = internal["probabilities"].variables
        assert 0 < probabilities["max_var"].numpy() <= 1.0
        names = [w.name for w in layer.weights]
        assert len(names) == len(set(names))  # range variables do not collide
        assert sum("_kernel_min" in n for n in names) == 4
    # Int32-fed layers and the residual stream (adds, position embeddings) stay
    # unwrapped, in float; LayerNorm and the FFN are wrapped.
    names = [layer.name for layer in model.layers]
    for name in ("embeddings_word", "embeddings_type", "attention_mask", "mean_pooling",
                 "embeddings_position"):
        assert name in names, name
    # The looked-up embedding rows and the pooled mean are rounded as TFLite rounds
    # them (their own range variables, set by calibration).
    for name, point in (("embeddings_word", "output"), ("embeddings_type", "output"),
                        ("mean_pooling", "mean")):
        fq = model.get_layer(name)._internal_quantizers[point]
        assert fq.variables["max_var"].numpy() > fq.variables["min_var"].numpy(), name
    assert isinstance(model.get_layer("embeddings_word"), quant.FakeQuantEmbedding)
    adds = [n for n in names if n.endswith("_add")]
    assert len(adds) == 5  # the embedding sum and 2 residuals per layer
    for name in adds:
        layer = model.get_layer(name)
        assert isinstance(layer.quantize_config, quant.PassThroughQuantizeConfig), name
        assert not layer._output_quantizers, name
    ffn = wrapper(model, "layer_0_ffn_in")
    assert [w.name for w, _, _ in ffn._weight_vars] == ["layer_0_ffn_in/kernel:0"]
    (gelu,) = ffn._quantize_activations  # exact GELU: tfmot knows "gelu" by name
    assert gelu.activation is keras.activations.gelu
    assert gelu._should_pre_quantize() and gelu._should_post_quantize()
    for name in ("embeddings_norm", "layer_0_attention_norm", "layer_1_ffn_norm"):
        assert wrapper(model, name)._output_quantizers, name
    # Logits: quantized kernel, no fake-quant output (a range from before training
    # would clip logits that training grows; the converter calibrates it instead).
    head = wrapper(model, "classifier")
    assert isinstance(head.quantize_config, quant.DenseQuantizeConfig)
    assert len(head._weight_vars) == 1 and not head._output_quantizers


def test_qat_starts_close_to_float_and_trains(tiny, qat):
    assert agreement(qat["before"], tiny["logits"]) == 1.0
    assert np.abs(qat["before"] - tiny["logits"]).max() < 0.05
    assert np.isfinite(qat["loss"])
    changed = {v.name for v in qat["model"].variables
               if not np.array_equal(v.numpy(), qat["variables"][v.name])}
    for i in range(2):
        for part in ATTENTION_KERNELS:
            assert f"layer_{i}_attention/{part}/kernel:0" in changed
        assert f"layer_{i}_ffn_in/kernel:0" in changed
    assert "quant_layer_1_ffn_norm/output_max:0" in changed  # ranges follow training
    assert "embeddings_word/embeddings:0" in changed


def test_calibration_sets_activation_ranges(tiny, qat):
    """Without calibration, activation ranges start at tfmot's [-6, 6]: the model still
    predicts like the float one, less closely."""
    norm = wrapper(qat["model"], "layer_1_ffn_norm")._output_quantizer_vars
    assert -6.0 < norm["min_var"].numpy() < 0 < norm["max_var"].numpy() < 6.0
    gelu = wrapper(qat["model"], "layer_0_ffn_in")._quantize_activations[0]
    assert 0 < gelu._pre_activation_vars["max_var"].numpy() < 6.0

    plain = quant.quantize_for_training(tiny["model"])
    norm = wrapper(plain, "layer_1_ffn_norm")._output_quantizer_vars
    assert (norm["min_var"].numpy(), norm["max_var"].numpy()) == (-6.0, 6.0)
    logits = predict(plain, tiny["test"])
    assert agreement(logits, tiny["logits"]) >= 0.9
    assert np.abs(logits - tiny["logits"]).max() > np.abs(qat["before"] - tiny["logits"]).max()


def test_other_activation_and_cls_pooling():
    """`gelu_approximate` (unknown to tfmot) gets DenseQuantizeConfig; [CLS] pooling."""
    arch = BertArchitecture(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                            intermediate_size=32, max_positions=16, type_vocab_size=2,
                            hidden_act="gelu_approximate")
    model = build_classifier(arch, 3, pooling="cls")
    qat_model = quant.quantize_for_training(model)
    assert isinstance(wrapper(qat_model, "layer_0_ffn_in").quantize_config,
                      quant.DenseQuantizeConfig)
    assert isinstance(wrapper(qat_model, "cls_token").quantize_config,
                      quant.PassThroughQuantizeConfig)
    ids = np.random.default_rng(0).integers(1, 50, size=(4, 12)).astype("int32")
    features = {"input_ids": ids, "input_mask": np.ones_like(ids),
                "segment_ids": np.zeros_like(ids)}
    flat = to_tflite(qat_model, "qat", max_seq_length=12, representative=lambda: (
        {name: value[i:i + 1] for name, value in features.items()} for i in range(4)))
    census = op_census(flat)
    assert census["float_matmuls"] == 0
    assert census["int8_matmuls"] == expected_matmuls(model) == 10
    assert "GELU int8->int8" in census["ops"]
    np.testing.assert_allclose(run_tflite(flat, [features]),
                               probabilities(model, [(features, None)]), atol=0.025)


# === Pruning-preserving QAT ===


def prune(model, batches, sparsity: float = 0.5):
    """Prune the encoder's attention and FFN kernels to `sparsity` in 2 steps."""
    schedule = pruning.make_schedule(PruneConfig(schedule="constant",
                                                 final_sparsity=sparsity, frequency=1),
                                     total_steps=2)
    wrapped = pruning.wrap_for_pruning(model, schedule, ("layer_.*",), ())
    optimizer = keras.optimizers.SGD(0.01)
    wrapped.optimizer = optimizer
    callback = tfmot.sparsity.keras.UpdatePruningStep()
    callback.set_model(wrapped)
    callback.on_train_begin()
    for features, labels in batches[:2]:
        callback.on_train_batch_begin(batch=-1)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, wrapped(features, training=True), from_logits=True))
        grads = tape.gradient(loss, wrapped.trainable_variables)
        optimizer.apply_gradients(zip(grads, wrapped.trainable_variables))
    callback.on_epoch_end(batch=-1)
    return pruning.strip(wrapped)


def pruned_kernel_sparsity(qat_model) -> dict[str, float]:
    return {name: float(np.mean(value == 0))
            for name, value in quant.effective_kernels(qat_model).items()
            if name.startswith("layer_")}


def test_pqat_keeps_sparsity_in_attention_and_ffn(tiny, trained_run):
    # A fresh copy: pruning wraps (and so changes) the source model's layers.
    pruned = prune(load_model(trained_run / "finetune")[0], tiny["train"])
    names = pruning.select_layers(pruned, ("layer_.*",), ())
    before = pruning.kernel_sparsity(pruned, names)
    assert len(before) == 12 and all(v["sparsity"] == 0.5 for v in before.values())

    qat_model = quant.quantize_for_training(pruned, preserve_sparsity=True)
    train_steps(qat_model, tiny["train"], steps=48, learning_rate=1e-3)
    measured = pruned_kernel_sparsity(qat_model)
    assert sorted(measured) == sorted(before)  # q, k, v, o, ffn_in, ffn_out x 2 layers
    assert all(s >= 0.49 for s in measured.values()), measured
    layer = wrapper(qat_model, "layer_0_attention")
    assert all(not v["sparsity_mask"].trainable for _, _, v in layer._weight_vars)

    # What the converted model computes with: the int8 weights of the 12 matmuls.
    flat = to_tflite(qat_model, "qat", max_seq_length=tiny["seq_len"],
                     representative=tiny["representative"])
    weights = matmul_weight_sparsity(flat)
    encoder = {name: w["sparsity"] for name, w in weights.items() if "layer_" in name}
    assert len(encoder) == 12
    assert all(s >= 0.49 for s in encoder.values()), encoder
    assert agreement(run_tflite(flat, tiny["test"]), predict(pruned, tiny["test"])) \
        >= 0.9

    # Without preserve_sparsity, Adam revives the pruned weights within a few steps.
    plain = quant.quantize_for_training(pruned)
    train_steps(plain, tiny["train"], steps=10, learning_rate=1e-3)
    assert max(pruned_kernel_sparsity(plain).values()) < 0.1


def test_calibration_sample_depends_on_its_seed_alone(tiny):
    """The calibration batches are the same whatever TensorFlow's global seed (a seeded
    tf.data shuffle is not: `slimbert run` and `slimbert quantize` drew other samples)."""
    def ids(sample):
        return [features["input_ids"].numpy().tolist() for features, _ in sample]

    tf.random.set_seed(1)
    first = ids(training_sample(tiny["prep"], 2, 4, seed=7))
    tf.random.set_seed(2)
    assert ids(training_sample(tiny["prep"], 2, 4, seed=7)) == first
    assert ids(training_sample(tiny["prep"], 2, 4, seed=8)) != first
    assert [len(batch) for batch in first] == [4, 4]


# === TFLite variants ===


@pytest.fixture(scope="module")
def calibrated(tiny):
    """The `int8` variant's Keras model: a quantized copy calibrated, never trained."""
    return quant.quantize_for_training(
        tiny["model"], calibration=[features for features, _ in tiny["train"][:2]])


@pytest.fixture(scope="module")
def flatbuffers(tiny, qat, calibrated):
    out = {}
    for kind in TFLITE_VARIANTS:
        model = {"qat": qat["model"], "int8": calibrated}.get(kind, tiny["model"])
        representative = tiny["representative"] if kind in ("int8", "qat") \
            else None
        out[kind] = to_tflite(model, kind, max_seq_length=tiny["seq_len"],
                              representative=representative)
    return out


@pytest.mark.parametrize("kind", TFLITE_VARIANTS)
def test_variant_runs_and_agrees_with_keras(tiny, flatbuffers, kind):
    flat = flatbuffers[kind]
    census = op_census(flat)
    assert census["flex_ops"] == [] and census["custom_ops"] == []
    interpreter = Interpreter(model_content=flat)
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    assert sorted(inputs) == [f"serving_default_{n}:0" for n in
                              ("input_ids", "input_mask", "segment_ids")]
    for detail in inputs.values():
        assert detail["dtype"] == np.int32
        assert list(detail["shape"]) == [1, tiny["seq_len"]]
        # int8 kinds have a fixed batch of 1 (biases fuse into their matmuls).
        batch = 1 if kind in INT8_ACTIVATION_VARIANTS else -1
        assert list(detail["shape_signature"]) == [batch, tiny["seq_len"]]
    (output,) = interpreter.get_output_details()
    assert list(output["shape"]) == [1, 2]
    assert output["dtype"] == np.float32

    # Probabilities: a softmax closes the graph (two classes: they move at most half as
    # much as the logits, hence half the logits' tolerances).
    outputs = run_tflite(flat, tiny["test"], num_threads=1)
    assert outputs.shape == tiny["probabilities"].shape
    np.testing.assert_allclose(outputs.sum(-1), 1, atol=1e-5)
    assert agreement(outputs, tiny["probabilities"]) >= 0.9
    if kind != "qat":  # QAT trained on: compared with the QAT model below
        tolerance = {"float32": 1e-4, "gpu": 5e-4, "cpu": 0.005,
                     "int8": 0.025}[kind]
        assert np.abs(outputs - tiny["probabilities"]).max() < tolerance
    # The quantize stage and the export gate run on all cores: the same outputs.
    np.testing.assert_array_equal(run_tflite(flat, tiny["test"], num_threads=2), outputs)


def test_qat_int8_computes_what_the_qat_model_computes(tiny, qat, flatbuffers):
    outputs = run_tflite(flatbuffers["qat"], tiny["test"])
    np.testing.assert_allclose(outputs, probabilities(qat["model"], tiny["test"]),
                               atol=0.025)


def test_int8_computes_what_its_calibrated_model_computes(tiny, calibrated, flatbuffers):
    outputs = run_tflite(flatbuffers["int8"], tiny["test"])
    np.testing.assert_allclose(outputs, probabilities(calibrated, tiny["test"]), atol=0.025)


def _batch_matmul_inputs(flat: bytes) -> list[list[tuple[str, int]]]:
    """(dtype, zero point) of both inputs of every BATCH_MATMUL in the flatbuffer."""
    interpreter = Interpreter(model_content=flat)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    out = []
    for op in interpreter._get_ops_details():  # noqa: SLF001
        if op["op_name"] == "BATCH_MATMUL":
            out.append([(tensors[i]["dtype"].__name__,
                         int(tensors[i]["quantization_parameters"]["zero_points"][0]))
                        for i in op["inputs"]])
    return out


@pytest.mark.parametrize("kind", INT8_ACTIVATION_VARIANTS)
def test_attention_batch_matmuls_run_in_xnnpack(tiny, flatbuffers, kind, tmp_path):
    """The right-hand inputs of both attention batch matmuls (scaled query, value) are
    quantized with zero point 0, the condition of XNNPACK's int8 BATCH_MATMUL, so that
    no batch matmul is left to the slow builtin kernel; the softmax runs in float."""
    inputs = _batch_matmul_inputs(flatbuffers[kind])
    assert len(inputs) == 2 * num_transformer_layers(tiny["model"])
    for (lhs_dtype, _), (rhs_dtype, rhs_zero_point) in inputs:
        assert lhs_dtype == rhs_dtype == "int8"
        assert rhs_zero_point == 0
    path = tmp_path / f"{kind}.tflite"
    path.write_bytes(flatbuffers[kind])
    plan = execution_plan(path)
    assert "BATCH_MATMUL" not in plan["builtin"] and "SOFTMAX" not in plan["builtin"]
    # One per layer and the output's (the model returns probabilities).
    assert op_census(flatbuffers[kind])["ops"]["SOFTMAX float32->float32"] == \
        num_transformer_layers(tiny["model"]) + 1
    # What stays builtin: the int8 embedding lookups, GELU, the mask cast and maximum.
    assert set(plan["builtin"]) <= {"GATHER", "GELU", "CAST", "MAXIMUM"}


def test_op_census(tiny, flatbuffers):
    model = tiny["model"]
    matmuls = expected_matmuls(model)
    assert matmuls == 17
    census = {kind: op_census(flat) for kind, flat in flatbuffers.items()}
    for kind in ("int8", "qat"):
        assert census[kind]["float_matmuls"] == 0, kind
        assert census[kind]["hybrid_matmuls"] == 0, kind
        assert census[kind]["int8_matmuls"] == matmuls, kind
        assert census[kind]["ops"]["BATCH_MATMUL int8,int8->int8"] == 4, kind
        # The residual stream, LayerNorm arithmetic and softmax stay float, as the
        # quantized Keras model computes them.
        floats = {key.split(" ")[0] for key in census[kind]["ops"] if "float32" in key}
        assert {"ADD", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX"} <= floats, kind
        assert floats <= set(QAT_FLOAT_OPS) | {"CAST", "QUANTIZE", "DEQUANTIZE", "SHAPE"}
    # Dynamic range: int8 weights with float activations for the 12 encoder
    # projections; the 4 attention batch matmuls (two activations) and the classifier
    # (64 weights, under the converter's 1024-element threshold) stay float.
    dynamic = census["cpu"]
    assert dynamic["hybrid_matmuls"] == 12 and dynamic["float_matmuls"] == 5
    assert dynamic["int8_matmuls"] == 0
    # float16: weights stored as float16 and dequantized; all matmuls in float32.
    half = census["gpu"]
    assert half["float_matmuls"] == matmuls
    assert half["ops"]["DEQUANTIZE float16->float32"] > 0
    assert not any("int8" in key for key in half["ops"])
    assert census["float32"]["float_matmuls"] == matmuls
    sizes = {kind: len(flat) for kind, flat in flatbuffers.items()}
    assert sizes["cpu"] < sizes["gpu"] < sizes["float32"]
    assert sizes["int8"] < 0.3 * sizes["float32"]


@pytest.fixture(scope="module")
def per_channel(tiny):
    """A QAT copy with per-channel FFN kernels, trained 5 steps, and its qat model."""
    model = quant.quantize_for_training(
        tiny["model"], per_channel=True,
        calibration=[features for features, _ in tiny["train"][:2]])
    train_steps(model, tiny["train"], steps=5)
    quant.refresh_weight_ranges(model)
    flat = to_tflite(model, "qat", max_seq_length=tiny["seq_len"],
                     representative=tiny["representative"])
    return {"model": model, "flat": flat}


def tflite_tensors(flat: bytes) -> dict[str, dict]:
    """name -> {"shape", "scales", "zero_points", "type"} of every tensor."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(flat, 0).Subgraphs(0)
    out = {}
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        q = tensor.Quantization()
        out[tensor.Name().decode()] = {
            "shape": list(tensor.ShapeAsNumpy()), "type": tensor.Type(),
            "scales": q.ScaleAsNumpy() if q and q.ScaleLength() else np.zeros(0),
            "zero_points": q.ZeroPointAsNumpy() if q and q.ZeroPointLength() else None}
    return out


def test_per_channel_ffn_kernels_convert_per_channel(tiny, per_channel):
    model, flat = per_channel["model"], per_channel["flat"]
    ffn = wrapper(model, "layer_0_ffn_in")
    assert isinstance(ffn.quantize_config, quant.PerChannelDenseQuantizeConfig)
    ((kernel, quantizer, variables),) = ffn._weight_vars
    assert quantizer.per_axis and variables["max_var"].shape == (kernel.shape[-1],)
    # Each output channel on its own grid: its largest weight is +-127 steps.
    np.testing.assert_allclose(variables["max_var"].numpy(),
                               np.abs(kernel.numpy()).max(axis=0), rtol=1e-6)
    (gelu,) = ffn._quantize_activations
    assert gelu._should_pre_quantize() and gelu._should_post_quantize()
    # In TFLite: one scale per output channel (max|w| / 127), all matmuls int8.
    tensors = tflite_tensors(flat)
    per_channel_kernels = [t for name, t in tensors.items()
                           if "ffn_in" in name and len(t["scales"]) > 1
                           and t["shape"] == [kernel.shape[1], kernel.shape[0]]]
    assert per_channel_kernels
    expected = np.abs(quant.effective_kernels(model)["layer_0_ffn_in/kernel"]).max(axis=0)
    assert any(np.allclose(t["scales"], expected / 127, rtol=1e-5)
               for t in per_channel_kernels)
    census = op_census(flat)
    assert census["int8_matmuls"] == expected_matmuls(tiny["model"])
    assert census["float_matmuls"] == census["hybrid_matmuls"] == 0
    # The int8 model computes what the Keras model computes.
    outputs = run_tflite(flat, tiny["test"])
    np.testing.assert_allclose(outputs, probabilities(model, tiny["test"]), atol=0.025)


def test_qat_int8_stores_embeddings_on_the_keras_grid(per_channel):
    """The int8 word-embedding table's scale is the range the QAT model rounds the
    looked-up rows to (so Keras and TFLite use the same embedding values)."""
    fq = per_channel["model"].get_layer("embeddings_word")._internal_quantizers["output"]
    low, high = fq.variables["min_var"].numpy(), fq.variables["max_var"].numpy()
    tables = [t for name, t in tflite_tensors(per_channel["flat"]).items()
              if "embeddings_word" in name and len(t["shape"]) == 2
              and len(t["scales"]) == 1]
    assert tables
    np.testing.assert_allclose(tables[0]["scales"][0], (high - low) / 255, rtol=1e-3)


# === Outlier channels of the FFN output ===


def test_split_output_dense_is_the_dense_in_float():
    dense = keras.layers.Dense(6, name="layer_0_ffn_out")
    x = tf.random.stateless_normal([2, 5, 8], seed=[1, 2])
    expected = dense(x).numpy()
    split = quant.SplitOutputDense.from_config(
        {**dense.get_config(), "outlier_channels": [4, 1]})
    split(x)
    split.set_weights(dense.get_weights())
    assert split.outlier_channels == [1, 4]
    np.testing.assert_allclose(split(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    again = quant.SplitOutputDense.from_config(split.get_config())
    assert again.outlier_channels == [1, 4] and again.units == 6


def copy_model(model: keras.Model) -> keras.Model:
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


@pytest.fixture(scope="module")
def outlier_model(tiny):
    """The tiny model with FFN output channel 3 of layer 0 made 40x larger (as BERT's
    outlier dimensions are), and a QAT copy that splits it off, trained 3 steps, and its
    qat model."""
    model = copy_model(tiny["model"])
    dense = model.get_layer("layer_0_ffn_out")
    kernel, bias = dense.get_weights()
    kernel[:, 3] *= 40.0
    bias[3] = 40.0 * bias[3] + 20.0
    dense.set_weights([kernel, bias])
    calibration = [features for features, _ in tiny["train"][:2]]
    qat = quant.quantize_for_training(model, per_channel=True, calibration=calibration,
                                      split_outliers=4.0)
    train_steps(qat, tiny["train"], steps=3)
    quant.refresh_weight_ranges(qat)
    flat = to_tflite(qat, "qat", max_seq_length=tiny["seq_len"],
                     representative=tiny["representative"])
    return {"model": model, "calibration": calibration, "qat": qat, "flat": flat}


def test_outlier_channels_are_found_on_calibration_data(tiny, outlier_model):
    found = quant.outlier_channels(outlier_model["model"], outlier_model["calibration"], 4.0)
    assert 3 in found["layer_0_ffn_out"]
    assert len(found["layer_0_ffn_out"]) < 4  # of 16 channels: only the large ones
    assert quant.outlier_channels(tiny["model"], outlier_model["calibration"], 0) == {}
    assert quant.split_channels(outlier_model["qat"]) == found


def test_split_outliers_convert_to_two_int8_matmuls_with_their_own_ranges(
        tiny, outlier_model):
    qat, flat = outlier_model["qat"], outlier_model["flat"]
    layer = wrapper(qat, "layer_0_ffn_out")
    assert isinstance(layer.layer, quant.SplitOutputDense)
    assert isinstance(layer.quantize_config, quant.SplitOutputDenseQuantizeConfig)
    census = op_census(flat)
    splits = len(quant.split_channels(qat))
    assert census["int8_matmuls"] == expected_matmuls(tiny["model"]) + splits
    assert census["float_matmuls"] == census["hybrid_matmuls"] == 0
    # The ordinary channels' int8 output step is far finer than the outliers'.
    interpreter = Interpreter(model_content=flat)
    tensors = interpreter.get_tensor_details()
    steps = sorted(tensors[op["outputs"][0]]["quantization"][0]
                   for op in interpreter._get_ops_details()  # noqa: SLF001
                   if op["op_name"] == "FULLY_CONNECTED"
                   and "layer_0_ffn_out" in tensors[op["outputs"][0]]["name"])
    assert len(steps) == 2 and steps[1] > 5 * steps[0]
    for name, point in (("main", 0), ("outliers", 1)):
        variables = layer.layer._internal_quantizers[name].variables  # noqa: SLF001
        low, high = variables["min_var"].numpy(), variables["max_var"].numpy()
        assert (high - low) / 255 == pytest.approx(steps[point], rel=1e-3)
    # The int8 model computes what the QAT model computes.
    outputs = run_tflite(flat, tiny["test"])
    np.testing.assert_allclose(outputs, probabilities(qat, tiny["test"]), atol=0.025)


def test_split_outliers_keep_the_pruned_zeros(tiny, outlier_model):
    """Prune-preserving QAT of a layer with outlier channels: every zero of its kernel
    stays zero through training and in both int8 matmuls."""
    model = copy_model(outlier_model["model"])
    dense = model.get_layer("layer_0_ffn_out")
    kernel, bias = dense.get_weights()
    kernel[np.abs(kernel) < np.median(np.abs(kernel))] = 0.0
    dense.set_weights([kernel, bias])
    qat = quant.quantize_for_training(model, per_channel=True, preserve_sparsity=True,
                                      calibration=outlier_model["calibration"],
                                      split_outliers=4.0)
    channels = quant.split_channels(qat)["layer_0_ffn_out"]
    train_steps(qat, tiny["train"], steps=3)
    trained = quant.effective_kernels(qat)["layer_0_ffn_out/kernel"]
    assert np.all(trained[kernel == 0] == 0) and np.mean(trained == 0) >= 0.5
    flat = to_tflite(qat, "qat", max_seq_length=tiny["seq_len"],
                     representative=tiny["representative"])
    weights = {name: counts for name, counts in matmul_weight_sparsity(flat).items()
               if "layer_0_ffn_out" in name}
    assert sorted(counts["parameters"] for counts in weights.values()) == \
        sorted([kernel.size, kernel.shape[0] * len(channels)])
    # Zeros in int8: every pruned one (in one matmul or the other), plus the zeroed
    # outlier columns of the main matmul (rounding may add a few).
    zeros = sum(counts["zeros"] for counts in weights.values())
    assert zeros >= int(np.sum(kernel == 0)) + kernel.shape[0] * len(channels)


def test_run_tflite_pads_shorter_examples(tiny, flatbuffers):
    """Batches padded to their longest example run through the fixed-length model."""
    batches = list(batch_examples(read_split(tiny["prep"], "test", with_text=False), 16))
    assert max(f["input_ids"].shape[1] for f, _ in batches) < tiny["seq_len"]
    outputs = run_tflite(flatbuffers["float32"], batches)
    np.testing.assert_allclose(outputs, tiny["probabilities"], atol=1e-4)


def test_conversion_errors(tiny):
    with pytest.raises(ValueError, match="kind must be one of"):
        to_tflite(tiny["model"], "int4", max_seq_length=8)
    with pytest.raises(ValueError, match="needs representative data"):
        to_tflite(tiny["model"], "int8", max_seq_length=8)
    with pytest.raises(ValueError, match="needs a quantized model"):
        to_tflite(tiny["model"], "int8", max_seq_length=8,
                  representative=tiny["representative"])
