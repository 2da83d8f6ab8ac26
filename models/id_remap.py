"""`IdRemap`: maps token ids of one vocabulary to rows of a smaller embedding table.

A student whose vocabulary was pruned (`models.shape_pruning.prune_shape`) keeps its
teacher's tokenizer: a WordPiece tokenizer given a smaller vocabulary would split words
differently. The model therefore still takes the original ids, and this layer, its
first op, looks each one up in an int32 table (original id -> row of the student's
word embeddings; removed ids -> the [UNK] row).

The table is a non-trainable int32 weight, so it is saved with the model, and the lookup
is one `tf.gather`, a TFLite builtin (GATHER). It has no kernel: tfmot pruning leaves it
alone (`get_prunable_weights` is empty) and QAT leaves it in float (it is fed by the
`input_ids` input, which `models.quantization.qat` never annotates).

Example:
    >>> import numpy as np
    >>> remap = IdRemap(5)
    >>> remap.build((None, None))
    >>> remap.set_weights([np.array([0, 1, 1, 2, 1], "int32")])
    >>> remap(np.array([[0, 3, 4]], "int32")).numpy()
    array([[0, 2, 1]], dtype=int32)
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

PACKAGE = "slimbert"


@keras.saving.register_keras_serializable(package=PACKAGE)
class IdRemap(keras.layers.Layer):
    """int32 ids [batch, seq] -> int32 rows [batch, seq] through a lookup table.

    The table starts at zeros (every id -> row 0); whoever builds the model assigns it
    (`prune_shape`), and saving/loading keeps it. Ids must be below `input_vocab_size`
    (as they must be below an `Embedding`'s row count).

    Args:
        input_vocab_size: int. Number of input ids (rows of the table).
    """

    def __init__(self, input_vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(input_vocab_size, int) or input_vocab_size <= 0:
            raise ValueError(f"IdRemap.input_vocab_size must be a positive int, found "
                             f"{input_vocab_size!r}")
        self.input_vocab_size = input_vocab_size

    def build(self, input_shape) -> None:
        self.table = self.add_weight(name="table", shape=(self.input_vocab_size,),
                                     dtype="int32", initializer="zeros", trainable=False)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.table, tf.cast(inputs, tf.int32))

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_signature(self, input_signature):
        return tf.TensorSpec(input_signature.shape, tf.int32)

    def get_prunable_weights(self) -> list:
        return []

    def get_config(self) -> dict:
        config = super().get_config()
        config["input_vocab_size"] = self.input_vocab_size
        return config


__all__ = ["IdRemap"]
