"""BERT encoder and classifier as flat tf_keras functional models.

The models are built for what comes after fine-tuning: tfmot pruning (`clone_model` +
`prune_low_magnitude`), quantization-aware training (`quantize_annotate_layer`) and TFLite
conversion, including full-integer int8. Hence:

- functional models only, no `Lambda` layers, every custom layer registered under the
  `slimbert` package with a `get_config` that mirrors its constructor;
- attention is a `MultiHeadAttention` subclass (`BertSelfAttention`), so the q/k/v/o
  kernels are MHA's inner `EinsumDense` layers, and the feed-forward network and pooler
  are plain `Dense` layers;
- the padding mask adds a bounded value (`mask_value`, default -100) to the attention
  scores instead of Keras' -1e9, which full-integer conversion cannot represent;
- the classifier is flat (the encoder layers are rebuilt in the same graph, not nested as
  a sub-model), so `clone_model(clone_function=...)` reaches every layer.
- plain tensor ops only (`tf.expand_dims`, never `x[:, tf.newaxis]`, whose StridedSlice
  needs Flex ops): the float model converts with TFLite builtin ops, dynamic `seq` included.

Inputs are three int32 tensors of shape [batch, seq] with a dynamic `seq` (batches are
padded to their longest example): `input_ids`, `input_mask` (1 = real token, 0 = padding)
and `segment_ids`. Layer names (used by pruning/quantization configs to select layers):

    [embeddings_remap (with `input_vocab_size` only)], embeddings_word,
    embeddings_position, embeddings_type, embeddings_add, embeddings_norm,
    embeddings_dropout, attention_mask,
    layer_{i}_attention, layer_{i}_attention_dropout, layer_{i}_attention_add,
    layer_{i}_attention_norm, layer_{i}_ffn_in, layer_{i}_ffn_out, layer_{i}_ffn_dropout,
    layer_{i}_ffn_add, layer_{i}_ffn_norm,
    cls_token + pooler (pooling "cls", and in the encoder) | mean_pooling (pooling "mean"),
    head_dropout, classifier

Example:
    >>> import numpy as np
    >>> arch = BertArchitecture(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2,
    ...                         intermediate_size=64, max_positions=64, type_vocab_size=2)
    >>> model = build_classifier(arch, num_classes=3, pooling="mean")
    >>> ids = np.array([[2, 7, 9, 3, 0]], dtype="int32")
    >>> inputs = {"input_ids": ids, "input_mask": (ids > 0).astype("int32"),
    ...           "segment_ids": np.zeros_like(ids)}
    >>> model(inputs).shape
    TensorShape([1, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras

from data.features import INPUT_NAMES
from models.id_remap import IdRemap

PACKAGE = "slimbert"
POOLINGS = ("cls", "mean")
ACTIVATIONS = ("gelu", "gelu_approximate")
INITIALIZER_RANGE = 0.02


# === Config ===


@dataclass(frozen=True)
class BertArchitecture:
    """Shape of a BERT encoder (Hugging Face `BertConfig` names in brackets).

    Args:
        vocab_size: int. WordPiece vocabulary size [vocab_size].
        hidden_size: int. Width of embeddings and transformer layers [hidden_size].
        num_layers: int. Number of transformer layers [num_hidden_layers].
        num_heads: int. Attention heads per layer; must divide `hidden_size`
            [num_attention_heads].
        intermediate_size: int. Width of the feed-forward network [intermediate_size].
        max_positions: int. Longest sequence the position table covers
            [max_position_embeddings].
        type_vocab_size: int. Number of segment (token type) ids [type_vocab_size].
        layer_norm_eps: float. LayerNorm epsilon [layer_norm_eps].
        dropout: float. Dropout rate of embeddings, attention probabilities, residual
            branches and (by default) the classification head.
        hidden_act: str. `gelu` (exact erf GELU, Hugging Face's "gelu") or
            `gelu_approximate` (tanh approximation: original TF BERT, keras-hub,
            Hugging Face's "gelu_new").
        head_size: int | None. Width of one attention head; None (every checkpoint)
            derives it as `hidden_size // num_heads`, and then `num_heads` must divide
            `hidden_size`. A student with fewer heads than its teacher keeps the
            teacher's head size (`models.shape_pruning`), so `num_heads * head_size`
            may be smaller than `hidden_size`. After construction it is always the
            int in use; `dataclasses.replace` carries it over, so pass `head_size=None`
            when changing `hidden_size` or `num_heads` of a model that should derive it.
        input_vocab_size: int | None. Size of the vocabulary the `input_ids` come
            from, when it differs from the embedding table: the model then maps each
            id to a row of its `vocab_size`-row table through an `IdRemap` layer
            (`embeddings_remap`; a vocabulary-pruned student keeps its teacher's
            tokenizer). None: ids index the table directly.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    hidden_act: str = "gelu"
    head_size: int | None = None
    input_vocab_size: int | None = None

    def __post_init__(self) -> None:
        optional = [key for key in ("head_size", "input_vocab_size")
                    if getattr(self, key) is not None]
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                    "intermediate_size", "max_positions", "type_vocab_size", *optional):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertArchitecture.{key} must be a positive int, "
                                 f"found {value!r}")
        if self.head_size is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"BertArchitecture: hidden_size {self.hidden_size} is not "
                                 f"divisible by num_heads {self.num_heads} (or give "
                                 "head_size)")
            object.__setattr__(self, "head_size", self.hidden_size // self.num_heads)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BertArchitecture.dropout must be in [0, 1), "
                             f"found {self.dropout!r}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"BertArchitecture.layer_norm_eps must be positive, "
                             f"found {self.layer_norm_eps!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertArchitecture.hidden_act must be one of {ACTIVATIONS}, "
                             f"found {self.hidden_act!r}")


def _initializer() -> keras.initializers.Initializer:
    return keras.initializers.TruncatedNormal(stddev=INITIALIZER_RANGE)


# === Layers ===


@keras.saving.register_keras_serializable(package=PACKAGE)
def gelu_approximate(x: tf.Tensor) -> tf.Tensor:
    """GELU with the tanh approximation (original TF BERT, keras-hub's BertBackbone)."""
    return tf.nn.gelu(x, approximate=True)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute position embeddings for a dynamic sequence length.

    Takes the token embeddings [batch, seq, hidden] (for shape and dtype) and returns the
    first `seq` rows of the position table, broadcast to [batch, seq, hidden]. `seq` must
    not exceed `max_positions`.

    Args:
        max_positions: int. Rows of the position table.
        hidden_size: int. Width of the table.
        initializer: initializer (or its name/config) of the table.
    """

    def __init__(self, max_positions: int, hidden_size: int,
                 initializer: str | dict | keras.initializers.Initializer = "glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.max_positions = int(max_positions)
        self.hidden_size = int(hidden_size)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape) -> None:
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.max_positions, self.hidden_size),
            initializer=self.initializer, trainable=True)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        length = tf.shape(inputs)[1]
        table = tf.cast(self.embeddings[:length], self.compute_dtype)
        return tf.broadcast_to(tf.expand_dims(table, 0), tf.shape(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_prunable_weights(self) -> list:
        return []

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"max_positions": self.max_positions, "hidden_size": self.hidden_size,
                       "initializer": keras.initializers.serialize(self.initializer)})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionMask(keras.layers.Layer):
    """input_mask [batch, seq] (1 = real token) -> attention mask [batch, 1, seq].

    The mask is a float tensor of 0/1 in the compute dtype; `BertSelfAttention` turns
    it into a bounded additive bias. It masks keys only (as BERT does): padded query
    positions still get (meaningless) outputs, which later layers must ignore.
    """

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.expand_dims(tf.cast(inputs, self.compute_dtype), axis=1)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], 1, input_shape[1]])

    def get_prunable_weights(self) -> list:
        return []


class QuantPoints:
    """Mixin: named fake-quantization points inside a layer's computation.

    `QUANT_POINTS` names them; `models.quantization` fills `_internal_quantizers`
    ({point: fake_quant(tensor, training)}) for quantization-aware training, so that the
    Keras model rounds the same tensors that the int8 TFLite model holds in int8. In a
    float model the dict is empty and `_fake_quant` returns its input.
    """

    QUANT_POINTS: tuple[str, ...] = ()
    # Points quantized symmetrically (zero point 0) instead of on a min/max range.
    SYMMETRIC_QUANT_POINTS: tuple[str, ...] = ()

    def _fake_quant(self, point: str, x: tf.Tensor, training) -> tf.Tensor:
        quantizer = getattr(self, "_internal_quantizers", {}).get(point)
        return x if quantizer is None else quantizer(x, training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BertSelfAttention(QuantPoints, keras.layers.MultiHeadAttention):
    """`MultiHeadAttention` whose padding mask adds a bounded value to the scores.

    Keras adds -1e9 to masked scores; a tensor with that range breaks full-integer TFLite
    conversion (every real score rounds to zero). Here a masked score gets `mask_value`
    added instead: `scores + (1 - mask) * mask_value`. With -100, a padded key's weight
    is at most e^-100 times a real key's for any realistic score range, so float outputs
    on real tokens are unchanged; real-token scores get exactly +0.

    Call it as `layer(x, value=x, attention_mask=mask)` (keywords after the first
    argument), so that tfmot wrappers, which take one positional input, can re-call it.

    Args:
        mask_value: float. Added to the attention scores of masked positions (< 0).
        **kwargs: `MultiHeadAttention` arguments (num_heads, key_dim, dropout, ...).
    """

    # Points inside the attention computation where QAT fake-quantizes: the scaled
    # query, key, value, the raw scores, the probabilities, the context, and the query
    # projection before scaling: the tensors an int8 TFLite model holds there. The mask
    # addition and the softmax stay float (int8 SOFTMAX runs on a slow builtin kernel;
    # XNNPACK takes the float one).
    QUANT_POINTS = ("query", "key", "value", "scores", "probabilities", "context",
                    "projected_query")
    # The right-hand inputs of the two batch matmuls once converted to TFLite: the
    # scaled query (the scores are computed as key x query^T) and the value. LiteRT's
    # XNNPACK delegate takes an int8 BATCH_MATMUL only when that input has zero point 0;
    # with asymmetric ranges both matmuls fall back to the slow builtin int8 kernel.
    SYMMETRIC_QUANT_POINTS = ("query", "value")

    def __init__(self, *args, mask_value: float = -100.0, **kwargs):
        super().__init__(*args, **kwargs)
        if mask_value >= 0:
            raise ValueError(f"mask_value must be negative, found {mask_value!r}")
        self.mask_value = float(mask_value)

    def _compute_attention(self, query, key, value, attention_mask=None, training=None):
        # As MultiHeadAttention's, with the fake-quantization points of QAT.
        query = self._fake_quant("projected_query", query, training)
        query = self._fake_quant(
            "query", tf.multiply(query, 1.0 / math.sqrt(float(self._key_dim))), training)
        key = self._fake_quant("key", key, training)
        value = self._fake_quant("value", value, training)
        scores = self._fake_quant(
            "scores", tf.einsum(self._dot_product_equation, key, query), training)
        probabilities = self._masked_softmax(scores, attention_mask, training=training)
        dropped = self._dropout_layer(probabilities, training=training)
        context = self._fake_quant(
            "context", tf.einsum(self._combine_equation, dropped, value), training)
        return context, probabilities

    def _masked_softmax(self, attention_scores: tf.Tensor,
                        attention_mask: tf.Tensor | None = None,
                        training=None) -> tf.Tensor:
        # `attention_scores` = [B, N, T, S]; `attention_mask` = [B, T or 1, S].
        if attention_mask is not None:
            mask = tf.cast(attention_mask, attention_scores.dtype)
            mask_expansion_axis = -len(self._attention_axes) * 2 - 1
            for _ in range(len(attention_scores.shape) - len(mask.shape)):
                mask = tf.expand_dims(mask, axis=mask_expansion_axis)
            attention_scores = attention_scores + (1.0 - mask) * tf.cast(
                self.mask_value, attention_scores.dtype)
        return self._fake_quant("probabilities", self._softmax(attention_scores), training)

    def get_prunable_weights(self) -> list:
        """The q/k/v/o kernels (tfmot's registry matches the stock MHA class only)."""
        return [self._query_dense.kernel, self._key_dense.kernel,
                self._value_dense.kernel, self._output_dense.kernel]

    def get_config(self) -> dict:
        config = super().get_config()
        config["mask_value"] = self.mask_value
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClsToken(keras.layers.Layer):
    """[batch, seq, hidden] -> [batch, hidden]: the first ([CLS]) position."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs[:, 0, :]

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], input_shape[-1]])

    def get_prunable_weights(self) -> list:
        return []


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedMeanPooling(QuantPoints, keras.layers.Layer):
    """Mean over real tokens: ([batch, seq, hidden], input_mask [batch, seq]) -> [batch, hidden].

    Padded positions get weight 0; a row without real tokens gives zeros. Under QAT the
    mean is fake-quantized (it is the int8 input of the classifier's matmul); the int8
    TFLite model computes the sum and division in float.
    """

    QUANT_POINTS = ("mean",)

    def call(self, inputs: list[tf.Tensor], training=None) -> tf.Tensor:
        sequence, mask = inputs
        mask = tf.expand_dims(tf.cast(mask, sequence.dtype), axis=-1)
        total = tf.reduce_sum(sequence * mask, axis=1)
        count = tf.maximum(tf.reduce_sum(mask, axis=1), tf.cast(1.0, sequence.dtype))
        return self._fake_quant("mean", total / count, training)

    def compute_output_shape(self, input_shape):
        sequence_shape = tf.TensorShape(input_shape[0])
        return tf.TensorShape([sequence_shape[0], sequence_shape[-1]])

    def get_prunable_weights(self) -> list:
        return []


# === Functional model ===


def _inputs() -> dict[str, keras.KerasTensor]:
    return {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in INPUT_NAMES}


def _encoder_graph(arch: BertArchitecture, inputs: dict, mask_value: float) -> tf.Tensor:
    """Embeddings + transformer layers on `inputs`; returns the sequence output."""
    ids = inputs["input_ids"]
    if arch.input_vocab_size is not None:
        ids = IdRemap(arch.input_vocab_size, name="embeddings_remap")(ids)
    word = keras.layers.Embedding(arch.vocab_size, arch.hidden_size,
                                  embeddings_initializer=_initializer(),
                                  name="embeddings_word")(ids)
    position = PositionEmbedding(arch.max_positions, arch.hidden_size,
                                 initializer=_initializer(), name="embeddings_position")(word)
    segment = keras.layers.Embedding(arch.type_vocab_size, arch.hidden_size,
                                     embeddings_initializer=_initializer(),
                                     name="embeddings_type")(inputs["segment_ids"])
    x = keras.layers.Add(name="embeddings_add")([word, position, segment])
    x = keras.layers.LayerNormalization(epsilon=arch.layer_norm_eps,
                                        name="embeddings_norm")(x)
    x = keras.layers.Dropout(arch.dropout, name="embeddings_dropout")(x)
    mask = AttentionMask(name="attention_mask")(inputs["input_mask"])
    activation = "gelu" if arch.hidden_act == "gelu" else gelu_approximate

    for i in range(arch.num_layers):
        prefix = f"layer_{i}"
        attention = BertSelfAttention(
            num_heads=arch.num_heads, key_dim=arch.head_size, dropout=arch.dropout,
            kernel_initializer=_initializer(), mask_value=mask_value,
            name=f"{prefix}_attention")(x, value=x, attention_mask=mask)
        attention = keras.layers.Dropout(arch.dropout,
                                         name=f"{prefix}_attention_dropout")(attention)
        x = keras.layers.Add(name=f"{prefix}_attention_add")([x, attention])
        x = keras.layers.LayerNormalization(epsilon=arch.layer_norm_eps,
                                            name=f"{prefix}_attention_norm")(x)
        ffn = keras.layers.Dense(arch.intermediate_size, activation=activation,
                                 kernel_initializer=_initializer(), name=f"{prefix}_ffn_in")(x)
        ffn = keras.layers.Dense(arch.hidden_size, kernel_initializer=_initializer(),
                                 name=f"{prefix}_ffn_out")(ffn)
        ffn = keras.layers.Dropout(arch.dropout, name=f"{prefix}_ffn_dropout")(ffn)
        x = keras.layers.Add(name=f"{prefix}_ffn_add")([x, ffn])
        x = keras.layers.LayerNormalization(epsilon=arch.layer_norm_eps,
                                            name=f"{prefix}_ffn_norm")(x)
    return x


def _pooler(arch: BertArchitecture, sequence_output: tf.Tensor) -> tf.Tensor:
    cls = ClsToken(name="cls_token")(sequence_output)
    return keras.layers.Dense(arch.hidden_size, activation="tanh",
                              kernel_initializer=_initializer(), name="pooler")(cls)


def build_encoder(arch: BertArchitecture, *, mask_value: float = -100.0) -> keras.Model:
    """The BERT encoder with the pooler (Dense tanh over [CLS]).

    Args:
        arch: BertArchitecture. Shape of the encoder.
        mask_value: float. Bounded value added to masked attention scores.

    Returns:
        A functional `keras.Model` named `bert_encoder`: inputs
        {"input_ids", "input_mask", "segment_ids"} (int32 [batch, seq]), outputs
        {"sequence_output": [batch, seq, hidden], "pooled_output": [batch, hidden]}.
        Outputs at padded positions are not meaningful.

    Example:
        >>> import numpy as np
        >>> arch = BertArchitecture(100, 32, 2, 2, 64, 64, 2)
        >>> encoder = build_encoder(arch)
        >>> ids = np.ones((2, 5), "int32")
        >>> out = encoder({"input_ids": ids, "input_mask": ids, "segment_ids": 0 * ids})
        >>> out["sequence_output"].shape
        TensorShape([2, 5, 32])
    """
    inputs = _inputs()
    sequence_output = _encoder_graph(arch, inputs, mask_value)
    outputs = {"sequence_output": sequence_output,
               "pooled_output": _pooler(arch, sequence_output)}
    return keras.Model(inputs=inputs, outputs=outputs, name="bert_encoder")


def build_classifier(arch: BertArchitecture, num_classes: int, *, pooling: str = "mean",
                     head_dropout: float | None = None,
                     mask_value: float = -100.0) -> keras.Model:
    """BERT encoder + pooling + dropout + Dense head, as one flat functional model.

    Args:
        arch: BertArchitecture. Shape of the encoder (same layer names as
            `build_encoder`, so encoder weights port by name).
        num_classes: int. Number of output logits.
        pooling: str. `cls` (BERT pooler: Dense tanh over [CLS]) or `mean` (mean of the
            sequence output over real tokens, using `input_mask`).
        head_dropout: float | None. Dropout before the head; None = `arch.dropout`.
        mask_value: float. Bounded value added to masked attention scores.

    Returns:
        A functional `keras.Model` named `bert_classifier` with the inputs of
        `build_encoder` and float32 logits [batch, num_classes] (also under a
        mixed_float16 policy).

    Example:
        >>> model = build_classifier(BertArchitecture(100, 32, 2, 2, 64, 64, 2), 2,
        ...                          pooling="cls")
        >>> [layer.name for layer in model.layers][-3:]
        ['pooler', 'head_dropout', 'classifier']
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, found {pooling!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, found {num_classes!r}")
    rate = arch.dropout if head_dropout is None else head_dropout
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"head_dropout must be in [0, 1), found {rate!r}")

    inputs = _inputs()
    sequence_output = _encoder_graph(arch, inputs, mask_value)
    if pooling == "cls":
        pooled = _pooler(arch, sequence_output)
    else:
        pooled = MaskedMeanPooling(name="mean_pooling")([sequence_output, inputs["input_mask"]])
    pooled = keras.layers.Dropout(rate, name="head_dropout")(pooled)
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=_initializer(), dtype="float32",
        name="classifier")(pooled)
    return keras.Model(inputs=inputs, outputs=logits, name="bert_classifier")


def num_transformer_layers(model: keras.Model) -> int:
    """Number of `layer_{i}_attention` layers in a model built here."""
    names = {layer.name for layer in model.layers}
    count = 0
    while f"layer_{count}_attention" in names:
        count += 1
    return count


__all__ = ["AttentionMask", "BertArchitecture", "BertSelfAttention", "ClsToken",
           "MaskedMeanPooling", "PositionEmbedding", "build_classifier", "build_encoder",
           "gelu_approximate", "num_transformer_layers"]
