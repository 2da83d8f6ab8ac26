"""The layers QAT swaps into our BERT, and the custom objects to clone and load QAT models.

`FakeQuantEmbedding` replaces the token and segment `Embedding`s (which tfmot cannot
annotate: they are fed by int32 inputs); `SplitOutputDense` replaces FFN output `Dense`
layers that have outlier channels. Both are registered Keras serializables (package
"slimbert"), so a model holding them loads once this module is imported.
`custom_objects` is the dict `quantize_scope` needs for every class of a QAT model.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras

from models.bert import (
    AttentionMask,
    BertSelfAttention,
    ClsToken,
    MaskedMeanPooling,
    PositionEmbedding,
    QuantPoints,
    gelu_approximate,
)
from models.quantization.configs import QUANTIZE_CONFIGS
from models.quantization.quantizers import KernelQuantizer


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

    BERT's FFN output has a few channels whose values are orders of magnitude larger
    than the others'. One int8 range for the whole output then rounds every ordinary
    channel to a coarse step, which changes predictions more than any other int8
    tensor. Here the layer computes two matmuls, the full one with the outlier columns
    zeroed and a narrow one of the outlier columns, each rounded to its own range
    (`main`, `outliers`), and adds them in float. The int8 TFLite model gets two int8
    FULLY_CONNECTED ops. In float it is the same function as the `Dense` it replaces.
    `quantize_for_training` swaps it in for the FFN output layers.

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


def custom_objects() -> dict[str, Any]:
    """Everything `quantize_scope` needs to clone, save and load our QAT models."""
    return {cls.__name__: cls for cls in (
        AttentionMask, BertSelfAttention, ClsToken, MaskedMeanPooling, PositionEmbedding,
        FakeQuantEmbedding, SplitOutputDense, KernelQuantizer, *QUANTIZE_CONFIGS)} | {
        "gelu_approximate": gelu_approximate}


__all__ = ["FakeQuantEmbedding", "SplitOutputDense", "custom_objects"]
