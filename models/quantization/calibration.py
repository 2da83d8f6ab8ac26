"""Ranges and kernels of a QAT model: calibration from data, weight ranges, the export view.

Activation ranges start at tfmot's [-6, 6] and follow a slow moving average during
training; `calibrate_ranges` starts them from a few batches instead, as post-training
calibration would. Weight ranges follow the kernels (`refresh_weight_ranges` sets them
from the kernels as they are now). `effective_kernels` are the kernels as training and
conversion see them (sparsity masks applied). For conversion, `strip_for_export` is the
model to convert and `frozen_per_axis_kernels` puts per-channel kernels into the graph
as constants on their grid (used by `export.tflite.to_tflite`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.quantization.quantizers import KernelQuantizer, symmetric_range


def batch_features(batch):
    """The feature dict of a batch given as features or as a (features, labels) pair."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class _RangeRecorder:
    """Stands in for an activation quantizer: records the float range, passes through."""

    def __init__(self, seen: dict, quantizer):
        self.seen = seen
        self.symmetric = bool(getattr(quantizer, "symmetric", False))

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = float(tf.reduce_min(inputs)), float(tf.reduce_max(inputs))
        _, old_low, old_high, _ = self.seen.get(id(weights), (weights, low, high, False))
        self.seen[id(weights)] = (weights, min(old_low, low), max(old_high, high),
                                  self.symmetric)
        return inputs


def calibrate_ranges(qat_model: keras.Model, batches: Iterable) -> int:
    """Set a QAT model's activation ranges to the float ranges seen on `batches`.

    Runs the model eagerly (inference mode) with every activation and output quantizer
    replaced by a recorder, then writes min(observed, 0) / max(observed, 0) into its
    range variables, as post-training calibration would (a symmetric quantizer gets
    `symmetric_range` of them). Weights stay fake-quantized.

    Args:
        qat_model: keras.Model. From `quantize_for_training`.
        batches: iterable of feature dicts or (features, labels) pairs.

    Returns:
        int. Number of ranges set.
    """
    seen: dict = {}
    saved = []
    for layer in qat_model.layers:
        if getattr(layer, "_output_quantizers", None):
            saved.append((layer, "_output_quantizers", layer._output_quantizers))  # noqa: SLF001
            layer._output_quantizers = [_RangeRecorder(seen, q)  # noqa: SLF001
                                        for q in layer._output_quantizers]  # noqa: SLF001
        for activation in getattr(layer, "_quantize_activations", []):
            saved.append((activation, "quantizer", activation.quantizer))
            activation.quantizer = _RangeRecorder(seen, activation.quantizer)
        for owner in (layer, getattr(layer, "layer", None)):
            for internal in getattr(owner, "_internal_quantizers", {}).values():
                saved.append((internal, "quantizer", internal.quantizer))
                internal.quantizer = _RangeRecorder(seen, internal.quantizer)
    try:
        for batch in batches:
            features = batch_features(batch)
            qat_model(features, training=False)
    finally:
        for owner, attribute, value in saved:
            setattr(owner, attribute, value)
    for variables, low, high, symmetric in seen.values():
        low, high = symmetric_range(low, high) if symmetric else (min(low, 0.0),
                                                                   max(high, 0.0))
        variables["min_var"].assign(low)
        variables["max_var"].assign(high)
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
def frozen_per_axis_kernels(qat_model: keras.Model):
    """While converting: per-channel kernels enter the graph as constants on their grid.

    The converter cannot fold a per-channel FakeQuant of a Dense kernel (it fails on the
    transpose to TFLite's [out, in] layout: "mismatched quantized axes"). A constant
    already rounded to the grid converts exactly instead: the converter quantizes FC
    weights per channel and symmetrically itself, and its scale, max|w|/127 per channel,
    is the grid's (the largest weight of a channel sits on the range edge). A model
    without per-channel `KernelQuantizer`s (a float model) is left as it is.

    Yields:
        int. Number of kernels frozen.
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


__all__ = ["batch_features", "calibrate_ranges", "effective_kernels",
           "frozen_per_axis_kernels", "refresh_weight_ranges", "strip_for_export"]
