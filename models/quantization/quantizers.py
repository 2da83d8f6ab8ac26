"""The fake-quantizers of our QAT: kernels, layer outputs, and points inside layers.

tfmot's own quantizers name their range variables after the weight and know nothing of
pruning; `KernelQuantizer` reaches a kernel by attribute path (so one config can
quantize the q/k/v/o kernels inside an attention layer), gives each range a unique
name, optionally keeps the kernel's zeros, and can be frozen to a constant for
conversion. Layers with `models.bert.QuantPoints` get an internal quantizer per point
(`add_internal_quantizers`), so the Keras model rounds the tensors that the int8 TFLite
model holds in int8 inside attention, embeddings and pooling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

quantize = tfmot.quantization.keras


def resolve_attribute(obj: Any, path: str) -> Any:
    """`resolve_attribute(layer, "_query_dense.kernel")` -> layer._query_dense.kernel."""
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
            kernel = resolve_attribute(layer.layer, self.attribute)
            mask = layer.add_weight(f"{self.name}_sparsity_mask", shape=tensor_shape,
                                    initializer=keras.initializers.Ones(),
                                    trainable=False)
            with tf.init_scope():
                mask.assign(tf.cast(tf.not_equal(kernel, 0), mask.dtype))
            weights["sparsity_mask"] = mask
        return weights

    # Set by `models.quantization.calibration.frozen_per_axis_kernels` while converting:
    # the kernel as a constant already rounded to its grid (see there).
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


def output_quantizer(symmetric: bool = False) -> quantize.quantizers.Quantizer:
    """tfmot's default 8-bit activation quantizer (moving average; asymmetric unless
    `symmetric`: then the range is [-128, 127] steps around an exact zero point 0)."""
    return quantize.quantizers.MovingAverageQuantizer(
        num_bits=8, per_axis=False, symmetric=bool(symmetric), narrow_range=False)


def symmetric_range(low: float, high: float) -> tuple[float, float]:
    """The [min, max] a symmetric 8-bit quantizer (not narrow) uses for values in
    [low, high]: max = the largest magnitude m, min = -m * 128 / 127, so that the
    converter's zero point is exactly 0 (as tfmot's symmetric moving average sets it)."""
    peak = max(abs(low), abs(high), 1e-8)
    return -peak * 128.0 / 127.0, peak


class InternalQuantizer:
    """One fake-quantization point inside a layer: an 8-bit moving-average quantizer and
    its range variables (owned by the layer)."""

    def __init__(self, quantizer, variables: dict) -> None:
        self.quantizer = quantizer
        self.variables = variables

    def __call__(self, x: tf.Tensor, training) -> tf.Tensor:
        return self.quantizer(x, False if training is None else training,
                              weights=self.variables)


def add_internal_quantizers(layer: keras.layers.Layer) -> None:
    """Fake-quantize a layer's internal points (`QuantPoints.QUANT_POINTS`), e.g. the
    attention internals: the int8 TFLite model computes scores, softmax and context in
    int8, so QAT trains with them quantized too. Each point gets an 8-bit moving-average
    quantizer whose range variables the layer owns."""
    if getattr(layer, "_internal_quantizers", None):
        return
    quantizers = {}
    for point in layer.QUANT_POINTS:
        quantizer = output_quantizer(point in layer.SYMMETRIC_QUANT_POINTS)
        variables = quantizer.build(tf.TensorShape(None), f"{point}_fq", layer)
        quantizers[point] = InternalQuantizer(quantizer, variables)
    layer._internal_quantizers = quantizers  # noqa: SLF001


__all__ = ["InternalQuantizer", "KernelQuantizer", "add_internal_quantizers",
           "output_quantizer", "resolve_attribute", "symmetric_range"]
