"""Quantization-aware training (tfmot) of our BERT: which layer is quantized how, and the
QAT copy of a model (`quantize_for_training`).

QAT follows the recipe that works for this model: `clone_model` +
`quantize_annotate_layer` with our own `QuantizeConfig`s (`configs`) where tfmot's
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
quantized output. The `qat` conversion (`export.tflite.to_tflite`) mirrors this.

Pruned models keep their sparsity through QAT with `preserve_sparsity=True`: Dense
layers on tfmot's configs use its prune-preserving scheme, and our kernel quantizers
(attention, per-channel FFN) multiply a 0/1 mask (captured when quantizing, stored as a
non-trainable variable) into the kernel before fake quantization, so zeros stay zero
whatever the optimizer does.

Example:
    >>> qat = quantize_for_training(model)
    >>> ... train qat with a GradientTape loop ...
    >>> flat = export.tflite.to_tflite(qat, "qat", max_seq_length=128,
    ...                                representative=examples)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from core.timing import phase
from models.bert import BertSelfAttention, ClsToken, PositionEmbedding, QuantPoints
from models.quantization.calibration import (
    batch_features,
    calibrate_ranges,
    refresh_weight_ranges,
)
from models.quantization.configs import (
    AttentionQuantizeConfig,
    DenseQuantizeConfig,
    OutputQuantizeConfig,
    PassThroughQuantizeConfig,
    PerChannelDenseQuantizeConfig,
    SplitOutputDenseQuantizeConfig,
)
from models.quantization.layers import FakeQuantEmbedding, SplitOutputDense, custom_objects
from models.quantization.quantizers import add_internal_quantizers

log = logging.getLogger(__name__)

quantize = tfmot.quantization.keras
# Activation functions tfmot's QuantizeAwareActivation knows by name.
TFMOT_ACTIVATIONS = frozenset({"linear", "relu", "swish", "gelu", "softmax", "sigmoid",
                               "tanh"})
# The residual stream stays float: the sums that feed LayerNorm (`Add`, including the
# embedding sum, and the position embeddings added into it) have outlier channels that
# no per-tensor 8-bit range represents (fake-quantizing these outputs flips far more
# predictions than fake-quantizing the LayerNorm outputs). The qat conversion
# keeps the matching ops in float too (`export.tflite.QAT_FLOAT_OPS`).
FLOAT = object()  # _config_for: leave the layer unannotated, in float


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
    plain `tf.GradientTape` loop and converts with
    `export.tflite.to_tflite(..., "qat")`.

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
            add_internal_quantizers(layer)
    if calibration is not None:
        calibrate_ranges(qat_model, calibration)
    return qat_model


@phase("calibrate")
def calibrated_copy(model: keras.Model, prep_dir, *, calibration_batches: int,
                    batch_size: int, seed: int, preserve_sparsity: bool = False,
                    per_channel: bool = False, split_outliers: float = 0.0) -> keras.Model:
    """`quantize_for_training` calibrated on `calibration_batches` training batches of a
    data stage's artifact (`prep_dir`; batches drawn with `seed`): the starting point of
    QAT and, untrained, the post-training `int8` model. 0 batches: tfmot's [-6, 6]."""
    from data.input import training_sample

    calibration = training_sample(prep_dir, calibration_batches, batch_size, seed) \
        if calibration_batches else None
    return quantize_for_training(model, preserve_sparsity=preserve_sparsity,
                                 calibration=calibration, per_channel=per_channel,
                                 split_outliers=split_outliers)


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
        features = batch_features(batch)
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


def split_channels(qat_model: keras.Model) -> dict[str, list[int]]:
    """The outlier channels of each `SplitOutputDense` of a QAT model, by layer name."""
    out = {}
    for layer in qat_model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, SplitOutputDense) and inner.outlier_channels:
            out[inner.name] = list(inner.outlier_channels)
    return out


__all__ = ["FLOAT", "TFMOT_ACTIVATIONS", "calibrated_copy", "outlier_channels",
           "quantize_for_training", "split_channels"]
