"""Quantization of our BERT: quantization-aware training (tfmot) and TFLite conversion.

Quantization-aware training (QAT) follows the recipe that works for this model:
`clone_model` + `quantize_annotate_layer` with our own `QuantizeConfig`s where tfmot's
default 8-bit registry has none, then `quantize_apply` inside `quantize_scope`:

=====================================  ==============================================
layer                                  how it is quantized
=====================================  ==============================================
`Dense` (FFN)                          `PerChannelDenseQuantizeConfig` with
                                       `per_channel=True`: 8-bit kernel, one range per
                                       output channel, + activation; else the default
                                       registry (one range per kernel)
the FFN output `Dense` with outlier    swapped for `SplitOutputDense`
channels (`split_outliers`)            (`SplitOutputDenseQuantizeConfig`): per-channel
                                       kernel; the outlier channels are a second
                                       matmul with an output range of their own
`BertSelfAttention`                    `AttentionQuantizeConfig`: its q/k/v/o kernels
                                       (8-bit, each with uniquely named range
                                       variables) and its internals (query projection,
                                       scaled query, key, value, scores, masked
                                       scores, probabilities, context: the int8
                                       tensors of the TFLite model); no output
                                       quantizer
the dropout after attention            `OutputQuantizeConfig`: the output projection
`LayerNormalization`                    `OutputQuantizeConfig`: output only (the
                                       input of the next matmul)
`Add` (residuals, embedding sum),      float: the residual stream has outlier channels
`PositionEmbedding`                    no per-tensor int8 range holds (`Add` gets
                                       `PassThroughQuantizeConfig`)
`Dropout`                              default registry (nothing to quantize)
`ClsToken`                             `PassThroughQuantizeConfig` (nothing)
the logits `Dense` (model output)      `DenseQuantizeConfig`: 8-bit kernel, output left
                                       to the converter's calibration
`Embedding` (token and segment ids)    not annotated (fed by int32 inputs, which tfmot
                                       would fake-quantize): swapped for
                                       `FakeQuantEmbedding`, which rounds the looked-up
                                       rows as the int8 TFLite table holds them
`MaskedMeanPooling`                    not annotated (fed by the int32 mask): its own
                                       quantization point rounds the mean
`AttentionMask`                        float (a 0/1 mask)
=====================================  ==============================================

The FFN's exact GELU is tfmot's "gelu" (recognized by name, quantized before and after
the activation, as TFLite runs GELU as its own int8 op); a `Dense` with an activation
tfmot does not know (our `gelu_approximate`) gets `DenseQuantizeConfig`: 8-bit kernel,
quantized output. The `qat_int8` conversion mirrors this: every matmul (projections,
FFN, the two attention batch matmuls) runs in int8, and the residual adds,
LayerNorm's arithmetic and the pooling's sum and division (`QAT_FLOAT_OPS`) stay float;
tensors QAT does not range take theirs from the representative data. Per-channel FFN
kernels enter the conversion as constants already on their grid
(`_frozen_per_axis_kernels`), which the converter re-quantizes per channel exactly.

Pruned models keep their sparsity through QAT with `preserve_sparsity=True`: Dense
layers on tfmot's configs use its prune-preserving scheme, and our kernel quantizers
(attention, per-channel FFN) multiply a 0/1
mask (captured when quantizing, stored as a non-trainable variable) into the kernel
before fake quantization, so zeros stay zero whatever the optimizer does.

Activation ranges start at tfmot's [-6, 6] and follow a slow moving average; pass a few
batches as `calibration` to start them from the data (`calibrate_ranges`). Weight
ranges are set from the kernels at once.

The QAT model converts to TFLite directly (fake-quant ops carry the ranges; the
representative dataset fills in the tensors QAT does not quantize, e.g. inside
attention): `strip_for_export` returns it unchanged.

Example:
    >>> qat = quantize_for_training(model)
    >>> ... train qat with a GradientTape loop ...
    >>> flat = to_tflite(qat, "qat_int8", seq_len=128, representative=examples)
    >>> op_census(flat)["float_matmuls"]
    0
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

from models.bert import (
    INPUT_NAMES,
    AttentionMask,
    BertSelfAttention,
    ClsToken,
    MaskedMeanPooling,
    PositionEmbedding,
    QuantPoints,
    gelu_approximate,
)
from models.pruning import zero_counts

log = logging.getLogger(__name__)

quantize = tfmot.quantization.keras
KINDS = ("float32", "dynamic_int8", "float16", "full_int8", "qat_int8")
MATMUL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL")
# Kinds with int8 activations. They are converted with a fixed batch of 1: only with
# static shapes does the converter fuse each bias into its FULLY_CONNECTED; with a
# dynamic batch every Dense/EinsumDense bias is a separate ADD after an int8 matmul
# output, which rounds every projection twice (measured: the QAT model's TFLite twin
# agreed with it on 91.5% of the test split instead of 94.3%, before the other fixes).
INT8_KINDS = ("full_int8", "qat_int8")
# Activation functions tfmot's QuantizeAwareActivation knows by name.
TFMOT_ACTIVATIONS = frozenset({"linear", "relu", "swish", "gelu", "softmax", "sigmoid",
                               "tanh"})


# === Quantizers ===


def _features(batch):
    """The feature dict of a batch given as features or as a (features, labels) pair."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _resolve(obj: Any, path: str) -> Any:
    """`_resolve(layer, "_query_dense.kernel")` -> layer._query_dense.kernel."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class KernelQuantizer(quantize.quantizers.LastValueQuantizer):
    """8-bit symmetric per-tensor weight quantizer for one named kernel of a layer.

    tfmot names a quantizer's range variables after the weight ("kernel_min"); the four
    attention kernels are all called "kernel", so each quantizer here carries its own
    `name` ("query_kernel", ...). With `preserve_sparsity`, `build` captures the kernel's
    0/1 mask (kernel != 0) as a non-trainable variable and `__call__` multiplies it into
    the kernel before fake quantization: pruned weights stay exactly zero and get no
    gradient.

    Args:
        name: str. Prefix of the range (and mask) variables; unique within the layer.
        attribute: str. Path of the kernel in the wrapped layer ("_query_dense.kernel").
        preserve_sparsity: bool. Re-apply the kernel's zero pattern at every call.
        per_axis: bool. One range per output channel (the kernel's last axis), as
            TFLite's per-channel int8 FULLY_CONNECTED weights hold them.
    """

    def __init__(self, name: str, attribute: str, preserve_sparsity: bool = False,
                 per_axis: bool = False):
        super().__init__(num_bits=8, per_axis=bool(per_axis), symmetric=True,
                         narrow_range=True)
        self.name = name
        self.attribute = attribute
        self.preserve_sparsity = bool(preserve_sparsity)

    def build(self, tensor_shape, name, layer) -> dict:
        weights = super().build(tensor_shape, self.name, layer)
        if self.preserve_sparsity:
            kernel = _resolve(layer.layer, self.attribute)
            mask = layer.add_weight(f"{self.name}_sparsity_mask", shape=tensor_shape,
                                    initializer=keras.initializers.Ones(),
                                    trainable=False)
            with tf.init_scope():
                mask.assign(tf.cast(tf.not_equal(kernel, 0), mask.dtype))
            weights["sparsity_mask"] = mask
        return weights

    # Set by `_frozen_per_axis_kernels` while converting: the kernel as a constant
    # already rounded to its grid (see there).
    frozen: np.ndarray | None = None

    def __call__(self, inputs, training, weights, **kwargs):
        if self.frozen is not None:
            return tf.constant(self.frozen)
        if "sparsity_mask" in weights:
            inputs = inputs * tf.cast(weights["sparsity_mask"], inputs.dtype)
        return quant_ops.LastValueQuantize(
            inputs, weights["min_var"], weights["max_var"], is_training=training,
            num_bits=self.num_bits, per_channel=self.per_axis, symmetric=self.symmetric,
            narrow_range=self.narrow_range)

    def get_config(self) -> dict:
        return {"name": self.name, "attribute": self.attribute,
                "preserve_sparsity": self.preserve_sparsity, "per_axis": self.per_axis}

    def __eq__(self, other) -> bool:
        return isinstance(other, KernelQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other) -> bool:
        return not self.__eq__(other)


def _output_quantizer() -> quantize.quantizers.Quantizer:
    """tfmot's default 8-bit activation quantizer (asymmetric, moving average)."""
    return quantize.quantizers.MovingAverageQuantizer(
        num_bits=8, per_axis=False, symmetric=False, narrow_range=False)


# === QuantizeConfigs ===


class KernelsQuantizeConfig(quantize.QuantizeConfig):
    """Quantizes the named kernels of a layer and, optionally, its output.

    Base of the configs below; the kernels are attribute paths inside the layer, so one
    config reaches weights of inner layers (MultiHeadAttention's EinsumDense).

    Args:
        kernels: dict. Quantizer name -> attribute path of the kernel.
        quantize_output: bool. Fake-quantize the layer's output.
        preserve_sparsity: bool. Keep the kernels' zeros (see `KernelQuantizer`).
    """

    per_axis = False

    def __init__(self, kernels: dict[str, str] | None = None, quantize_output: bool = False,
                 preserve_sparsity: bool = False):
        self.kernels = dict(kernels or {})
        self.quantize_output = bool(quantize_output)
        self.preserve_sparsity = bool(preserve_sparsity)

    def get_weights_and_quantizers(self, layer):
        return [(_resolve(layer, path),
                 KernelQuantizer(name, path, preserve_sparsity=self.preserve_sparsity,
                                 per_axis=self.per_axis))
                for name, path in self.kernels.items()]

    def set_quantize_weights(self, layer, quantize_weights) -> None:
        if len(quantize_weights) != len(self.kernels):
            raise ValueError(f"{layer.name}: {len(quantize_weights)} quantized weights for "
                             f"{len(self.kernels)} kernels {list(self.kernels)}")
        for path, weight in zip(self.kernels.values(), quantize_weights):
            owner_path, _, attr = path.rpartition(".")
            setattr(_resolve(layer, owner_path) if owner_path else layer, attr, weight)

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_activations(self, layer, quantize_activations) -> None:
        pass

    def get_output_quantizers(self, layer):
        return [_output_quantizer()] if self.quantize_output else []

    def get_config(self) -> dict:
        return {"kernels": self.kernels, "quantize_output": self.quantize_output,
                "preserve_sparsity": self.preserve_sparsity}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


ATTENTION_KERNELS = {"query_kernel": "_query_dense.kernel", "key_kernel": "_key_dense.kernel",
                     "value_kernel": "_value_dense.kernel",
                     "output_kernel": "_output_dense.kernel"}


class AttentionQuantizeConfig(KernelsQuantizeConfig):
    """`BertSelfAttention`: 8-bit q/k/v/o kernels, no output quantizer.

    The output is left to the next layer (the residual `Add` quantizes its own output);
    an output quantizer on a MultiHeadAttention wrapper breaks its keyword call.
    """

    def __init__(self, preserve_sparsity: bool = False, **kwargs):
        kwargs.pop("kernels", None)
        kwargs.pop("quantize_output", None)
        super().__init__(ATTENTION_KERNELS, quantize_output=False,
                         preserve_sparsity=preserve_sparsity)

    def get_weights_and_quantizers(self, layer):
        _build_projections(layer)
        _add_internal_quantizers(layer)
        return super().get_weights_and_quantizers(layer)

    def get_config(self) -> dict:
        return {"preserve_sparsity": self.preserve_sparsity}


class _InternalQuantizer:
    """One fake-quantization point inside an attention layer: an 8-bit moving-average
    quantizer and its range variables (owned by the attention layer)."""

    def __init__(self, quantizer, variables: dict) -> None:
        self.quantizer = quantizer
        self.variables = variables

    def __call__(self, x: tf.Tensor, training) -> tf.Tensor:
        return self.quantizer(x, False if training is None else training,
                              weights=self.variables)


def _add_internal_quantizers(layer: keras.layers.Layer) -> None:
    """Fake-quantize a layer's internal points (`QuantPoints.QUANT_POINTS`), e.g. the
    attention internals: the int8 TFLite model computes scores, softmax and context in
    int8, so QAT trains with them quantized too. Each point gets an 8-bit moving-average
    quantizer whose range variables the layer owns."""
    if getattr(layer, "_internal_quantizers", None):
        return
    quantizers = {}
    for point in layer.QUANT_POINTS:
        quantizer = _output_quantizer()
        variables = quantizer.build(tf.TensorShape(None), f"{point}_fq", layer)
        quantizers[point] = _InternalQuantizer(quantizer, variables)
    layer._internal_quantizers = quantizers  # noqa: SLF001


@keras.saving.register_keras_serializable(package="slimbert")
class FakeQuantEmbedding(QuantPoints, keras.layers.Embedding):
    """`Embedding` whose looked-up rows are fake-quantized (QAT only).

    The int8 TFLite model stores the table in int8 with the scale of the lookup's
    output (its range from the representative data); rounding the looked-up rows in
    the Keras model is the same arithmetic. `quantize_for_training` swaps it in for the
    token and segment embeddings.
    """

    QUANT_POINTS = ("output",)

    def call(self, inputs, training=None):
        return self._fake_quant("output", super().call(inputs), training)


@keras.saving.register_keras_serializable(package="slimbert")
class SplitOutputDense(QuantPoints, keras.layers.Dense):
    """`Dense` (no activation) whose outlier output channels get an int8 range of their
    own (QAT only).

    BERT's FFN output has a few channels (99, 127, 223 and 319 of the default
    MiniLM's 384) whose values reach 50-200 while the others stay within about 3. One
    int8 range for the whole output rounds every ordinary channel to a step of 0.3-0.8
    (measured: that rounding alone changed 4.3% of the test predictions, more than all
    other int8 tensors together). Here the layer computes two matmuls, the full one
    with the outlier columns zeroed and a narrow one of the outlier columns, each
    rounded to its own range (`main`, `outliers`), and adds them in float. The int8
    TFLite model gets two int8 FULLY_CONNECTED ops. In float it is the same function
    as the `Dense` it replaces. `quantize_for_training` swaps it in for the FFN
    output layers.

    Args:
        outlier_channels: list[int]. Output channels computed and rounded apart.
        **kwargs: `Dense` arguments.
    """

    QUANT_POINTS = ("main", "outliers")

    def __init__(self, *args, outlier_channels=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.outlier_channels = sorted(int(c) for c in outlier_channels)

    def call(self, inputs, training=None):
        if not self.outlier_channels:
            return self._fake_quant("main", super().call(inputs), training)
        # The ordinary channels: the full matmul with the outlier columns zeroed (their
        # output is exactly 0); the outlier channels: a narrow matmul, whose k columns
        # are put back in place by a broadcast multiply with a one-hot [k, units]
        # matrix and a sum (float ops in TFLite; no concatenation, which would force
        # one int8 range on both parts).
        one_hot = tf.one_hot(self.outlier_channels, self.units, dtype=self.kernel.dtype)
        keep = 1.0 - tf.reduce_sum(one_hot, axis=0)
        axes = [[inputs.shape.rank - 1], [0]]
        main = tf.tensordot(inputs, self.kernel * keep, axes)
        outliers = tf.tensordot(inputs, tf.gather(self.kernel, self.outlier_channels,
                                                  axis=1), axes)
        if self.use_bias:
            main = main + self.bias * keep
            outliers = outliers + tf.gather(self.bias, self.outlier_channels)
        main = self._fake_quant("main", main, training)
        outliers = self._fake_quant("outliers", outliers, training)
        return main + tf.reduce_sum(tf.expand_dims(outliers, -1) * one_hot, axis=-2)

    def get_config(self) -> dict:
        return {**super().get_config(), "outlier_channels": list(self.outlier_channels)}


def split_channels(qat_model: keras.Model) -> dict[str, list[int]]:
    """The outlier channels of each `SplitOutputDense` of a QAT model, by layer name."""
    out = {}
    for layer in qat_model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, SplitOutputDense) and inner.outlier_channels:
            out[inner.name] = list(inner.outlier_channels)
    return out


class SplitOutputDenseQuantizeConfig(KernelsQuantizeConfig):
    """`SplitOutputDense`: 8-bit kernel, one range per output channel; the two output
    parts are rounded by the layer's own quantization points."""

    per_axis = True

    def __init__(self, preserve_sparsity: bool = False, **kwargs):
        super().__init__({"kernel": "kernel"}, quantize_output=False,
                         preserve_sparsity=preserve_sparsity)

    def get_weights_and_quantizers(self, layer):
        _add_internal_quantizers(layer)
        return super().get_weights_and_quantizers(layer)

    def get_config(self) -> dict:
        return {"preserve_sparsity": self.preserve_sparsity}


def outlier_channels(model: keras.Model, batches: Iterable, ratio: float
                     ) -> dict[str, list[int]]:
    """The FFN output channels to quantize apart, by layer name.

    A channel is an outlier when its largest |value| over the real tokens of `batches`
    exceeds `ratio` times the median channel's. Layers are the encoder's `*_ffn_out`
    Dense layers.
    """
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)
              and layer.name.endswith("_ffn_out")]
    if not layers or ratio <= 0:
        return {}
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    peaks = [None] * len(layers)
    for batch in batches:
        features = _features(batch)
        real = np.asarray(features["input_mask"]).astype(bool)
        outputs = probe(features, training=False)
        for i, y in enumerate(tf.nest.flatten(outputs)):
            peak = np.abs(np.asarray(y)[real]).max(axis=0)
            peaks[i] = peak if peaks[i] is None else np.maximum(peaks[i], peak)
    out = {}
    for layer, peak in zip(layers, peaks):
        if peak is None:
            continue
        channels = np.flatnonzero(peak > ratio * np.median(peak))
        if len(channels):
            out[layer.name] = channels.tolist()
    return out


def _build_projections(layer: BertSelfAttention) -> None:
    """Create the q/k/v/o kernels of an attention layer rebuilt from its config.

    A layer loaded from a file has its EinsumDense sub-layers but no kernels until its
    first call; the QuantizeWrapper needs them when it builds.
    """
    if not getattr(layer, "_built_from_signature", False):
        raise ValueError(f"{layer.name}: attention layer without input shapes; call it "
                         "once before quantizing")
    query_shape = tf.TensorShape(layer._query_shape)  # noqa: SLF001
    projections = ((layer._query_dense, query_shape),  # noqa: SLF001
                   (layer._key_dense, tf.TensorShape(layer._key_shape)),  # noqa: SLF001
                   (layer._value_dense, tf.TensorShape(layer._value_shape)),  # noqa: SLF001
                   (layer._output_dense, query_shape[:-1].concatenate(  # noqa: SLF001
                       [layer._num_heads, layer._value_dim])))  # noqa: SLF001
    for dense, shape in projections:
        if not dense.built:
            with tf.init_scope():
                dense.build(shape)


class OutputQuantizeConfig(KernelsQuantizeConfig):
    """Output only (LayerNormalization, PositionEmbedding): no kernel is quantized."""

    def __init__(self, **kwargs):
        super().__init__({}, quantize_output=True)

    def get_config(self) -> dict:
        return {}


class PassThroughQuantizeConfig(KernelsQuantizeConfig):
    """Nothing quantized (ClsToken: a slice keeps its input's range)."""

    def __init__(self, **kwargs):
        super().__init__({}, quantize_output=False)

    def get_config(self) -> dict:
        return {}


class DenseQuantizeConfig(KernelsQuantizeConfig):
    """`Dense` outside tfmot's defaults: 8-bit kernel, activation left as it is.

    Used for an activation tfmot does not know (the output after it is quantized) and
    for the logits layer (output not quantized: a range fixed by calibration or a slow
    moving average would clip logits that training keeps growing; the converter takes
    the final range from the representative dataset instead).

    Args:
        preserve_sparsity: bool. Keep the kernel's zeros.
        quantize_output: bool. Fake-quantize the output (after the activation).
    """

    def __init__(self, preserve_sparsity: bool = False, quantize_output: bool = True,
                 **kwargs):
        super().__init__({"kernel": "kernel"}, quantize_output=quantize_output,
                         preserve_sparsity=preserve_sparsity)

    def get_config(self) -> dict:
        return {"preserve_sparsity": self.preserve_sparsity,
                "quantize_output": self.quantize_output}


class PerChannelDenseQuantizeConfig(KernelsQuantizeConfig):
    """Encoder `Dense` (FFN): 8-bit kernel with one range per output channel, and the
    activation quantized as tfmot's default config does (before and after GELU).

    A per-tensor range is set by the largest weight of the whole kernel (the FFN
    output kernels have a few weights 100x the typical one, so most weights would round
    to 0 or +-1); per channel, each output column keeps its own resolution. TFLite runs
    such weights as per-channel int8 FULLY_CONNECTED.

    Args:
        preserve_sparsity: bool. Keep the kernel's zeros.
    """

    per_axis = True

    def __init__(self, preserve_sparsity: bool = False, **kwargs):
        super().__init__({"kernel": "kernel"}, quantize_output=False,
                         preserve_sparsity=preserve_sparsity)

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, _output_quantizer())]

    def set_quantize_activations(self, layer, quantize_activations) -> None:
        layer.activation = quantize_activations[0]

    def get_config(self) -> dict:
        return {"preserve_sparsity": self.preserve_sparsity}


def custom_objects() -> dict[str, Any]:
    """Everything `quantize_scope` needs to clone, save and load our QAT models."""
    return {cls.__name__: cls for cls in (
        AttentionMask, BertSelfAttention, ClsToken, MaskedMeanPooling, PositionEmbedding,
        FakeQuantEmbedding, SplitOutputDense, SplitOutputDenseQuantizeConfig,
        KernelQuantizer, KernelsQuantizeConfig, AttentionQuantizeConfig,
        OutputQuantizeConfig, PassThroughQuantizeConfig, DenseQuantizeConfig,
        PerChannelDenseQuantizeConfig)} | {
        "gelu_approximate": gelu_approximate}


# === Quantization-aware training ===


def _fed_by_inputs(model: keras.Model) -> set[str]:
    """Names of layers that take one of the model's Input tensors directly."""
    names = set()
    for input_layer in model._input_layers:  # noqa: SLF001 (tfmot uses the same)
        for node in input_layer._outbound_nodes:  # noqa: SLF001
            names.add(node.outbound_layer.name)
    return names


def _activation_name(layer: keras.layers.Layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", type(activation).__name__)


# The residual stream stays float: the sums that feed LayerNorm (`Add`, including the
# embedding sum, and the position embeddings added into it) have outlier channels that
# no per-tensor 8-bit range represents (measured on the default model: fake-quantizing
# only these outputs flips 7% of the test predictions; only the LayerNorm outputs, 1%).
# TFLite keeps the matching ops in float too (`QAT_FLOAT_OPS`).
FLOAT = object()  # _config_for: leave the layer unannotated, in float
# Ops the qat_int8 conversion leaves in float: the residual adds, LayerNorm's
# arithmetic (mean, variance, rsqrt, scale) and the mean pooling's sum and division
# (QAT rounds only their result); every matmul stays int8.
QAT_FLOAT_OPS = ("ADD", "SUB", "MUL", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SUM", "DIV")


def _config_for(layer: keras.layers.Layer, preserve_sparsity: bool, is_output: bool,
                per_channel: bool = False) -> quantize.QuantizeConfig | object | None:
    """Our QuantizeConfig for `layer`, `FLOAT` to leave it in float, or None for tfmot's
    default registry."""
    if isinstance(layer, keras.layers.Dense) and is_output and \
            _activation_name(layer) == "linear":
        return DenseQuantizeConfig(preserve_sparsity=preserve_sparsity,
                                   quantize_output=False)
    if isinstance(layer, BertSelfAttention):
        return AttentionQuantizeConfig(preserve_sparsity=preserve_sparsity)
    if isinstance(layer, SplitOutputDense):
        return SplitOutputDenseQuantizeConfig(preserve_sparsity=preserve_sparsity)
    if isinstance(layer, keras.layers.Add):
        # Annotated with nothing to quantize: left unannotated, tfmot would give it an
        # output quantizer because it feeds an annotated LayerNorm.
        return PassThroughQuantizeConfig()
    if isinstance(layer, PositionEmbedding):
        return FLOAT
    if isinstance(layer, keras.layers.LayerNormalization) or (
            isinstance(layer, keras.layers.Dropout) and
            layer.name.endswith("_attention_dropout")):
        # LayerNorm output: the next matmul's input. The dropout after attention holds
        # the output projection's result, which TFLite computes in int8.
        return OutputQuantizeConfig()
    if isinstance(layer, ClsToken):
        return PassThroughQuantizeConfig()
    if isinstance(layer, keras.layers.Dense) and \
            _activation_name(layer) not in TFMOT_ACTIVATIONS:
        return DenseQuantizeConfig(preserve_sparsity=preserve_sparsity)
    if isinstance(layer, keras.layers.Dense) and per_channel:
        return PerChannelDenseQuantizeConfig(preserve_sparsity=preserve_sparsity)
    return None


def _annotate(model: keras.Model, preserve_sparsity: bool, per_channel: bool = False,
              splits: dict[str, list[int]] | None = None) -> keras.Model:
    skip = _fed_by_inputs(model)
    outputs = {t._keras_history.layer.name for t in tf.nest.flatten(model.outputs)}  # noqa: SLF001
    registry = quantize.default_8bit.Default8BitQuantizeRegistry()

    def clone(layer):
        if type(layer) is keras.layers.Embedding:
            return FakeQuantEmbedding.from_config(layer.get_config())
        if layer.name in skip or isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if layer.name in (splits or {}):
            layer = SplitOutputDense.from_config(
                {**layer.get_config(), "outlier_channels": splits[layer.name]})
        config = _config_for(layer, preserve_sparsity, layer.name in outputs, per_channel)
        if config is FLOAT:
            return layer.__class__.from_config(layer.get_config())
        if config is None and not registry.supports(layer):
            log.info("quantization: leaving %s (%s) in float", layer.name,
                     type(layer).__name__)
            return layer.__class__.from_config(layer.get_config())
        return quantize.quantize_annotate_layer(
            layer.__class__.from_config(layer.get_config()), quantize_config=config)

    with quantize.quantize_scope(custom_objects()):
        annotated = keras.models.clone_model(model, clone_function=clone)
    annotated.set_weights(model.get_weights())
    return annotated


class _PrunePreserveScheme(tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
    """tfmot's prune-preserving 8-bit scheme, minus one trap.

    Its registry claims to support every layer without trainable weights, then fails on
    any it does not know (`MaskedMeanPooling` feeding the head, when `quantize_apply`
    asks for that layer's output quantizer). Such layers are supported only if the
    default registry knows them.
    """

    def get_quantize_registry(self):
        registry = super().get_quantize_registry()
        default = quantize.default_8bit.Default8BitQuantizeRegistry()
        claims = registry.supports

        def supports(layer) -> bool:
            return claims(layer) and default.supports(layer)

        registry.supports = supports
        return registry


def quantize_for_training(model: keras.Model, *, preserve_sparsity: bool = False,
                          calibration: Iterable | None = None,
                          per_channel: bool = False, split_outliers: float = 0.0
                          ) -> keras.Model:
    """A quantization-aware training copy of a classifier or encoder from `models.bert`.

    Weights are copied (the input model is left untouched). The result trains with a
    plain `tf.GradientTape` loop and converts with `to_tflite(..., "qat_int8")`.

    Args:
        model: keras.Model. A functional model built by `models.bert` (float32).
        preserve_sparsity: bool. The model was pruned: keep every zero of the Dense
            and attention kernels through training (tfmot's prune-preserving scheme
            for Dense, a captured 0/1 mask for attention).
        calibration: iterable | None. A few batches (feature dicts or (features,
            labels) pairs) to start the activation ranges from (`calibrate_ranges`).
            Without it they start at tfmot's [-6, 6] and follow a moving average
            (decay 0.999) during training, which takes thousands of steps to settle.
        per_channel: bool. Quantize the FFN kernels with one range per output channel
            (`PerChannelDenseQuantizeConfig`) instead of one per kernel.
        split_outliers: float. With `calibration`: FFN output channels whose peak on
            the calibration batches exceeds this multiple of the median channel's get
            an int8 output range of their own (`SplitOutputDense`, found by
            `outlier_channels`; its kernel is quantized per channel whatever
            `per_channel` says); 0 = off.

    Returns:
        A new functional `keras.Model` whose quantized layers are `QuantizeWrapperV2`s.
        Its weight quantizers already hold the kernels' ranges (tfmot starts them at
        [-6, 6] until the first training step), so it predicts like the float model
        before any training.

    Example:
        >>> qat = quantize_for_training(model)
        >>> [l.name for l in qat.layers if "attention" in l.name][:1]
        ['quant_layer_0_attention']
    """
    calibration = list(calibration) if calibration is not None else None
    splits = outlier_channels(model, calibration, split_outliers) if calibration else {}
    if splits:
        log.info("quantization: FFN output channels with their own int8 range: %s", splits)
    annotated = _annotate(model, preserve_sparsity, per_channel, splits)
    scheme = (_PrunePreserveScheme()
              if preserve_sparsity else quantize.default_8bit.Default8BitQuantizeScheme())
    with quantize.quantize_scope(custom_objects()):
        qat_model = quantize.quantize_apply(annotated, scheme)
    refresh_weight_ranges(qat_model)
    for layer in qat_model.layers:
        if isinstance(layer, QuantPoints):  # embeddings and pooling (not wrapped)
            _add_internal_quantizers(layer)
    if calibration is not None:
        calibrate_ranges(qat_model, calibration)
    return qat_model


class _RangeRecorder:
    """Stands in for an activation quantizer: records the float range, passes through."""

    def __init__(self, seen: dict):
        self.seen = seen

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = float(tf.reduce_min(inputs)), float(tf.reduce_max(inputs))
        _, old_low, old_high = self.seen.get(id(weights), (weights, low, high))
        self.seen[id(weights)] = (weights, min(old_low, low), max(old_high, high))
        return inputs


def calibrate_ranges(qat_model: keras.Model, batches: Iterable) -> int:
    """Set a QAT model's activation ranges to the float ranges seen on `batches`.

    Runs the model eagerly (inference mode) with every activation and output quantizer
    replaced by a recorder, then writes min(observed, 0) / max(observed, 0) into its
    range variables, as post-training calibration would. Weights stay fake-quantized.

    Args:
        qat_model: keras.Model. From `quantize_for_training`.
        batches: iterable of feature dicts or (features, labels) pairs.

    Returns:
        int. Number of ranges set.
    """
    seen: dict = {}
    recorder = _RangeRecorder(seen)
    saved = []
    for layer in qat_model.layers:
        if getattr(layer, "_output_quantizers", None):
            saved.append((layer, "_output_quantizers", layer._output_quantizers))  # noqa: SLF001
            layer._output_quantizers = [recorder]  # noqa: SLF001
        for activation in getattr(layer, "_quantize_activations", []):
            saved.append((activation, "quantizer", activation.quantizer))
            activation.quantizer = recorder
        for owner in (layer, getattr(layer, "layer", None)):
            for internal in getattr(owner, "_internal_quantizers", {}).values():
                saved.append((internal, "quantizer", internal.quantizer))
                internal.quantizer = recorder
    try:
        for batch in batches:
            features = _features(batch)
            qat_model(features, training=False)
    finally:
        for owner, attribute, value in saved:
            setattr(owner, attribute, value)
    for variables, low, high in seen.values():
        variables["min_var"].assign(min(low, 0.0))
        variables["max_var"].assign(max(high, 0.0))
    return len(seen)


def effective_kernels(qat_model: keras.Model) -> dict[str, np.ndarray]:
    """The float kernels a QAT model's weight quantizers see, by variable name.

    That is each quantized kernel times its sparsity mask when it has one (tfmot's
    prune-preserving quantizer and `KernelQuantizer` both call it "sparsity_mask"):
    the values that training uses and that conversion quantizes.
    """
    out = {}
    for layer in qat_model.layers:
        for weight, _, variables in getattr(layer, "_weight_vars", []):
            value = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
            mask = variables.get("sparsity_mask")
            if mask is not None:
                value = value * np.asarray(mask)
            out[weight.name.split(":")[0]] = value
    return out


def refresh_weight_ranges(qat_model: keras.Model) -> None:
    """Set every weight quantizer's range from its kernel as it is now.

    Weight ranges follow the kernels at each training step, one optimizer update
    behind; after training, this makes the Keras model and its TFLite conversion (which
    derives per-channel scales from the kernels) use the same grid.
    """
    for layer in qat_model.layers:
        for weight, quantizer, variables in getattr(layer, "_weight_vars", []):
            quantizer(weight, True, weights=variables)  # training mode: sets the range


@contextlib.contextmanager
def _frozen_per_axis_kernels(qat_model: keras.Model):
    """While converting: per-channel kernels enter the graph as constants on their grid.

    The converter cannot fold a per-channel FakeQuant of a Dense kernel (it fails on the
    transpose to TFLite's [out, in] layout: "mismatched quantized axes"). A constant
    already rounded to the grid converts exactly instead: the converter quantizes FC
    weights per channel and symmetrically itself, and its scale, max|w|/127 per channel,
    is the grid's (the largest weight of a channel sits on the range edge).
    """
    frozen = []
    for layer in qat_model.layers:
        for weight, quantizer, variables in getattr(layer, "_weight_vars", []):
            if isinstance(quantizer, KernelQuantizer) and quantizer.per_axis:
                quantizer.frozen = quantizer(weight, False, weights=variables).numpy()
                frozen.append(quantizer)
    try:
        yield len(frozen)
    finally:
        for quantizer in frozen:
            quantizer.frozen = None


def strip_for_export(qat_model: keras.Model) -> keras.Model:
    """The model to convert after QAT: the QAT model itself.

    The TFLite converter reads the fake-quant ops of a QAT model as quantization ranges
    (weights are quantized from their fake-quant ranges, sparsity masks are constant-
    folded), so nothing needs stripping; this exists so that callers do not have to know.
    """
    return qat_model


# === TFLite conversion ===


def _concrete_function(model: keras.Model, seq_len: int, batch_size: int | None = None):
    specs = [tf.TensorSpec([batch_size, seq_len], tf.int32, name=name)
             for name in INPUT_NAMES]

    @tf.function(input_signature=specs)
    def serve(input_ids, input_mask, segment_ids):
        logits = model({"input_ids": input_ids, "input_mask": input_mask,
                        "segment_ids": segment_ids}, training=False)
        return {"logits": logits}

    return serve.get_concrete_function()


def to_tflite(model: keras.Model, kind: str, *, seq_len: int,
              representative: Callable[[], Iterable[dict]] | None = None,
              float_ops: Iterable[str] = QAT_FLOAT_OPS,
              batch_size: int | None = None) -> bytes:
    """Convert a classifier to a TFLite flatbuffer (builtin ops only, never Flex).

    Args:
        model: keras.Model. Float classifier, or a QAT model for `qat_int8`.
        kind: str. One of `KINDS`:
            `float32`; `dynamic_int8` (int8 weights, float activations); `float16`
            (float16 weights); `full_int8` (int8 weights and activations from a
            representative dataset, int8 logits; token ids stay int32); `qat_int8`
            (a QAT model, with a representative dataset for the ranges QAT did not
            learn, so that every matmul runs in int8).
        seq_len: int. Fixed sequence length of the inputs.
        batch_size: int | None. Fixed batch size; None: 1 for `INT8_KINDS`, else
            dynamic (resizable).
        representative: callable returning an iterable of feature dicts
            ({"input_ids", "input_mask", "segment_ids"}: int32 [1, seq_len]); needed by
            `full_int8` and `qat_int8`.
        float_ops: TFLite op names `qat_int8` leaves in float (default `QAT_FLOAT_OPS`:
            the residual stream and LayerNorm arithmetic, as QAT trained them); () for
            every op in int8.

    Returns:
        The flatbuffer: inputs input_ids/input_mask/segment_ids int32 [1, seq_len]
        (batch resizable unless fixed), output logits [1, num_classes].
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, found {kind!r}")
    if kind in ("full_int8", "qat_int8") and representative is None:
        raise ValueError(f"to_tflite kind {kind!r} needs representative data")
    if batch_size is None and kind in INT8_KINDS:
        batch_size = 1
    with _frozen_per_axis_kernels(model):
        function = _concrete_function(model, seq_len, batch_size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if kind != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if kind in ("full_int8", "qat_int8"):
        def dataset():
            for features in representative():
                # A dict, matched by signature input name: the flatbuffer's input
                # order is not the function's argument order.
                yield {name: np.asarray(features[name], dtype=np.int32).reshape(1, seq_len)
                       for name in INPUT_NAMES}

        converter.representative_dataset = dataset
    if kind == "full_int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():  # the converter's calibrator uses tf.lite.Interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        if kind == "qat_int8" and float_ops:
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


# === Inspection and inference ===


def _enum_names(cls) -> dict[int, str]:
    return {value: key for key, value in vars(cls).items()
            if not key.startswith("_") and isinstance(value, int)}


def op_census(tflite: bytes) -> dict[str, Any]:
    """Operators of a TFLite model by type and tensor dtypes.

    Args:
        tflite: bytes. A flatbuffer.

    Returns:
        {"ops": {"FULLY_CONNECTED int8,int8,int32->int8": count, ...} (op type, dtypes
        of all present inputs -> outputs), "float_matmuls", "int8_matmuls",
        "hybrid_matmuls" (float activations x int8 weights, dynamic-range kernels),
        "other_matmuls", "matmuls" (FULLY_CONNECTED + BATCH_MATMUL), "total_ops",
        "custom_ops" and "flex_ops" (names)}. Only the main subgraph is counted.
    """
    from ai_edge_litert import schema_py_generated as schema

    ops_names = _enum_names(schema.BuiltinOperator)
    type_names = {k: v.lower() for k, v in _enum_names(schema.TensorType).items()}
    model = schema.Model.GetRootAs(tflite, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(custom.decode() if custom else ops_names.get(builtin, str(builtin)))
    graph = model.Subgraphs(0)

    def dtype(index: int) -> str:
        return type_names[graph.Tensors(index).Type()]

    ops: Counter = Counter()
    matmuls = Counter()
    custom, flex = [], []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = codes[op.OpcodeIndex()]
        custom_code = model.OperatorCodes(op.OpcodeIndex()).CustomCode()
        if custom_code:
            (flex if name.startswith("Flex") else custom).append(name)
        inputs = [dtype(j) for j in op.InputsAsNumpy() if j >= 0] \
            if op.InputsLength() else []
        outputs = [dtype(j) for j in op.OutputsAsNumpy()] if op.OutputsLength() else []
        ops[f"{name} {','.join(inputs)}->{','.join(outputs)}"] += 1
        if name in MATMUL_OPS:
            activation, weight = inputs[0], inputs[1]
            if activation == weight == "float32":
                matmuls["float"] += 1
            elif activation == weight == "int8":
                matmuls["int8"] += 1
            elif activation == "float32" and weight == "int8":
                matmuls["hybrid"] += 1
            else:
                matmuls["other"] += 1
    return {"ops": dict(sorted(ops.items())), "float_matmuls": matmuls["float"],
            "int8_matmuls": matmuls["int8"], "hybrid_matmuls": matmuls["hybrid"],
            "other_matmuls": matmuls["other"], "matmuls": sum(matmuls.values()),
            "total_ops": graph.OperatorsLength(), "custom_ops": sorted(set(custom)),
            "flex_ops": sorted(set(flex))}


def census_summary(census: dict[str, Any]) -> dict[str, Any]:
    """`op_census` without the per-op table: matmul counts, op total, custom/Flex ops."""
    return {key: census[key] for key in ("matmuls", "int8_matmuls", "hybrid_matmuls",
                                         "float_matmuls", "other_matmuls", "total_ops",
                                         "custom_ops", "flex_ops")}


def matmul_weight_sparsity(tflite: bytes) -> dict[str, dict[str, Any]]:
    """Zeros of every constant weight operand of the model's matmuls: name ->
    `models.pruning.zero_counts` (parameters, zeros, zero fraction `sparsity`).

    The weights as the runtime reads them (int8 or float), keyed by tensor name: shows
    whether pruning survived conversion. Rounding to int8 can add a few zeros.
    """
    from ai_edge_litert import schema_py_generated as schema

    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
              schema.TensorType.INT8: np.int8}
    ops_names = _enum_names(schema.BuiltinOperator)
    model = schema.Model.GetRootAs(tflite, 0)
    graph = model.Subgraphs(0)
    out = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if ops_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())) \
                not in MATMUL_OPS:
            continue
        tensor = graph.Tensors(int(op.Inputs(1)))
        buffer = model.Buffers(tensor.Buffer())
        if buffer.Offset() > 1:  # stored after the flatbuffer (models over 2 GB)
            data = np.frombuffer(tflite, np.uint8, buffer.Size(), buffer.Offset())
        elif buffer.DataLength():
            data = buffer.DataAsNumpy()
        else:
            continue  # an activation (BATCH_MATMUL of scores and values)
        if tensor.Type() not in dtypes:
            continue
        values = np.frombuffer(data.tobytes(), dtypes[tensor.Type()])
        name = tensor.Name().decode()
        out[name if name not in out else f"{name}#{i}"] = zero_counts(values)
    return out


def _rows(batches) -> Iterable[dict[str, np.ndarray]]:
    """Single examples ([1, L] int32 features) from batches of features or
    (features, labels) pairs."""
    for batch in batches:
        features = _features(batch)
        arrays = {name: np.asarray(features[name]) for name in INPUT_NAMES}
        for i in range(arrays["input_ids"].shape[0]):
            yield {name: value[i:i + 1].astype(np.int32) for name, value in arrays.items()}


def run_tflite(tflite: bytes, batches, *, num_threads: int | None = None,
               on_example: Callable[[], Any] | None = None) -> np.ndarray:
    """Logits of a TFLite classifier, one example at a time, with the runtime adapter
    (ai-edge-litert first).

    Args:
        tflite: bytes. A flatbuffer from `to_tflite`.
        batches: iterable of feature dicts or (features, labels) pairs, features int32
            [B, L] with L <= the model's sequence length (shorter rows are padded).
        num_threads: int | None. Interpreter threads (None: the runtime's default).
        on_example: called after each example (a progress bar's `update`).

    Returns:
        float32 [N, num_classes] (int8 logits are dequantized).
    """
    from export.runtime import make_interpreter, run_token_ids

    interpreter, _ = make_interpreter(model_content=tflite, num_threads=num_threads)
    return run_token_ids(interpreter, _rows(batches), on_example)


__all__ = ["AttentionQuantizeConfig", "calibrate_ranges", "effective_kernels",
           "matmul_weight_sparsity", "DenseQuantizeConfig", "KINDS", "KernelQuantizer",
           "KernelsQuantizeConfig", "PassThroughQuantizeConfig", "OutputQuantizeConfig",
           "census_summary", "custom_objects", "op_census", "quantize_for_training",
           "refresh_weight_ranges", "run_tflite", "FakeQuantEmbedding",
           "PerChannelDenseQuantizeConfig", "SplitOutputDense",
           "SplitOutputDenseQuantizeConfig", "outlier_channels", "split_channels",
           "strip_for_export", "to_tflite"]
