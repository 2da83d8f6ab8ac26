"""TFLite conversion: the token-id classifier as each TFLite variant, and the raw-string
model (variant names: `export.targets.TFLITE_VARIANTS`).

`to_tflite` converts a float classifier (or, for `int8` and `qat`, a quantized model
from `models.quantization.quantize_for_training`: calibrated only for `int8`, trained
for `qat`) to a flatbuffer with builtin ops only, never Flex. The int8 conversion
mirrors how the quantized model rounds: every matmul (projections, FFN, the two
attention batch matmuls) runs in int8, and the residual adds, LayerNorm's arithmetic,
the attention mask and softmax and the pooling's sum and division (`QAT_FLOAT_OPS`) stay
float; tensors the quantized model does not range take theirs from the representative
data. The fake-quant ops carry
the QAT ranges, so the QAT model converts directly. Per-channel FFN kernels enter the
conversion as constants already on their grid
(`models.quantization.frozen_per_axis_kernels`), which the converter re-quantizes per
channel exactly.

`text_tflite` is the raw-string model: tokenizer and classifier in one flatbuffer.
Input `text` (string [B]); output `probabilities` (float32 [B, C]). The tokenizer is the
data stage's `BertTokenizer` (tensorflow_text's FastBertTokenizer, converted as TF Text
custom ops: `FastBertNormalize`, `FastWordpieceTokenizeWithOffsets`); everything else is
builtin ops. No Flex ops: run it with ai-edge-litert's `InterpreterWithCustomOps` and
`tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS` (see `export.runtime`). The
classifier's weights are dynamic-range int8, as in the `cpu` variant.

Example:
    >>> flat = to_tflite(qat, "qat", max_seq_length=128, representative=examples)
    >>> export.flatbuffer.op_census(flat)["float_matmuls"]
    0
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from core.timing import phase
from data.features import INPUT_NAMES
from data.tokenizer import BertTokenizer
from export.flatbuffer import op_census
from export.targets import INT8_ACTIVATION_VARIANTS, TFLITE_VARIANTS
from models.quantization.calibration import frozen_per_axis_kernels

# Variants with int8 activations (INT8_ACTIVATION_VARIANTS) are converted with a fixed
# batch of 1: only with static shapes does the converter fuse each bias into its
# FULLY_CONNECTED; with a dynamic batch every Dense/EinsumDense bias is a separate ADD
# after an int8 matmul output, which rounds every projection twice (and makes the QAT
# model's TFLite twin disagree with it more often).

# Ops the int8 conversion leaves in float: the residual adds, LayerNorm's arithmetic
# (mean, variance, rsqrt, scale), the attention mask and softmax (XNNPACK runs float
# SOFTMAX, int8 only on a slow builtin kernel) and the mean pooling's sum and division
# (the quantized model rounds only their result, see `models.quantization.qat`); every
# matmul stays int8.
QAT_FLOAT_OPS = ("ADD", "SUB", "MUL", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SUM", "DIV",
                 "SOFTMAX")


def _is_quantized(model: keras.Model) -> bool:
    """Whether tfmot wrapped the model's layers for quantization."""
    return any(type(layer).__name__.startswith("QuantizeWrapper") for layer in model.layers)


def _concrete_function(model: keras.Model, max_seq_length: int,
                       batch_size: int | None = None):
    specs = [tf.TensorSpec([batch_size, max_seq_length], tf.int32, name=name)
             for name in INPUT_NAMES]

    @tf.function(input_signature=specs)
    def serve(input_ids, input_mask, segment_ids):
        logits = model({"input_ids": input_ids, "input_mask": input_mask,
                        "segment_ids": segment_ids}, training=False)
        # Probabilities, as the SavedModel returns them and as MediaPipe's text
        # classifier expects its scores (it applies no softmax of its own).
        return {"probabilities": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)}

    return serve.get_concrete_function()


@phase("convert")
def to_tflite(model: keras.Model, kind: str, *, max_seq_length: int,
              representative: Callable[[], Iterable[dict]] | None = None,
              float_ops: Iterable[str] = QAT_FLOAT_OPS,
              batch_size: int | None = None) -> bytes:
    """Convert a classifier to a TFLite flatbuffer (builtin ops only, never Flex).

    Args:
        model: keras.Model. Float classifier; for `int8` and `qat` a quantized model
            (`models.quantization.quantize_for_training`).
        kind: str. One of `TFLITE_VARIANTS`:
            `float32`; `cpu` (dynamic-range: int8 weights, float activations); `gpu`
            (float16 weights); `int8` (a quantized model whose ranges come from
            calibration alone) and `qat` (one trained quantization-aware): every matmul
            in int8, with a representative dataset for the ranges the quantized model
            does not hold.
        max_seq_length: int. Fixed sequence length of the inputs.
        batch_size: int | None. Fixed batch size; None: 1 for `INT8_ACTIVATION_VARIANTS`, else
            dynamic (resizable).
        representative: callable returning an iterable of feature dicts
            ({"input_ids", "input_mask", "segment_ids"}: int32 [1, max_seq_length]);
            needed by `int8` and `qat`.
        float_ops: TFLite op names `int8` and `qat` leave in float (default
            `QAT_FLOAT_OPS`: the residual stream, LayerNorm arithmetic and softmax, as
            the quantized model computes them); () for every op in int8.

    Returns:
        The flatbuffer: inputs input_ids/input_mask/segment_ids int32 [1,
        max_seq_length] (batch resizable unless fixed), output `probabilities` float32 [1,
        num_classes] (a float SOFTMAX closes every variant's graph).
    """
    if kind not in TFLITE_VARIANTS:
        raise ValueError(f"kind must be one of {tuple(TFLITE_VARIANTS)}, found {kind!r}")
    if kind in INT8_ACTIVATION_VARIANTS and representative is None:
        raise ValueError(f"to_tflite kind {kind!r} needs representative data")
    if kind in INT8_ACTIVATION_VARIANTS and not _is_quantized(model):
        raise ValueError(f"to_tflite kind {kind!r} needs a quantized model from "
                         "models.quantization.quantize_for_training, found a float one")
    if batch_size is None and kind in INT8_ACTIVATION_VARIANTS:
        batch_size = 1
    with frozen_per_axis_kernels(model):
        function = _concrete_function(model, max_seq_length, batch_size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if kind != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "gpu":
        converter.target_spec.supported_types = [tf.float16]
    if kind in INT8_ACTIVATION_VARIANTS:
        def dataset():
            for features in representative():
                # A dict, matched by signature input name: the flatbuffer's input
                # order is not the function's argument order.
                yield {name: np.asarray(features[name], dtype=np.int32).reshape(
                    1, max_seq_length) for name in INPUT_NAMES}

        converter.representative_dataset = dataset
    with warnings.catch_warnings():  # the converter's calibrator uses tf.lite.Interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        if kind in INT8_ACTIVATION_VARIANTS and float_ops:
            # Calibrate, then quantize with the given ops left in float (the path of
            # tf.lite.experimental.QuantizationDebugger's selective quantization).
            from tensorflow.lite.python import convert

            converter.experimental_new_quantizer = True
            converter._experimental_calibrate_only = True  # noqa: SLF001
            flatbuffer = convert.mlir_quantize(converter.convert(),
                                               denylisted_ops=list(float_ops))
        else:
            flatbuffer = converter.convert()
    census = op_census(flatbuffer)
    if census["flex_ops"] or census["custom_ops"]:
        raise RuntimeError(f"{kind} TFLite model needs ops no runtime here has: "
                           f"flex {census['flex_ops']}, custom {census['custom_ops']}")
    return flatbuffer


class _TextClassifier(tf.Module):
    def __init__(self, model, tokenizer: BertTokenizer) -> None:
        super().__init__(name="text_classifier")
        self.model = model
        self.tokenizer = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        logits = self.model(self.tokenizer(text), training=False)
        return {"probabilities": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)}


@phase("convert")
def text_tflite(model, tokenizer: BertTokenizer, *, dynamic_int8: bool = True) -> bytes:
    """Convert tokenizer + classifier into a raw-string TFLite model (see module doc)."""
    module = _TextClassifier(model, tokenizer)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = True
    if dynamic_int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        flatbuffer = converter.convert()
    census = op_census(flatbuffer)
    if census["flex_ops"]:
        raise RuntimeError(f"the text TFLite model needs Flex ops {census['flex_ops']}")
    return flatbuffer


__all__ = ["QAT_FLOAT_OPS", "text_tflite", "to_tflite"]
