"""How much the loss depends on each attention head and each FFN neuron: the scores
`models.shape_pruning.prune_shape` keeps the most important ones by.

The score is the first-order Taylor estimate of Michel et al. 2019 ("Are Sixteen Heads
Really Better than One?"): put a gate xi (= 1) on a head's output; its importance is
|dL/dxi|, the loss change a first-order expansion predicts for removing the head (xi
= 0). Summed over a few batches, as their code and Hugging Face's bertology script do
(|gradient of each batch's mean loss|). FFN neurons get the same score, with the gate on
a neuron's activation (Molchanov et al. 2017 score channels this way).

Why it is cheap and needs no change to the model: a gate on head h multiplies the
head's context, which enters the model only through its rows of the attention output
kernel W_o[h] (shape [head_size, hidden]); gating it equals scaling W_o[h], so
dL/dxi_h = sum(W_o[h] * dL/dW_o[h]). Likewise a gate on FFN neuron j equals scaling
row j of the `ffn_out` kernel. One forward and backward pass per batch, with gradients
of existing variables only: no sub-model, no head mask input, no per-token activations
kept. Gradients at padded positions are zero (keys are masked, pooling ignores them),
so padding does not count.

Example:
    >>> heads = head_importance(model, batches)        # [num_layers, num_heads]
    >>> neurons = neuron_importance(model, batches)    # [num_layers, intermediate_size]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from core.timing import phase
from models.bert import num_transformer_layers


@phase("calibrate")
def _gate_gradients(model: keras.Model, batches: Iterable, kernels: list,
                    gate_axes: tuple[int, ...]) -> np.ndarray:
    """sum over batches of |sum over `gate_axes` of (kernel * dL/dkernel)| per kernel.

    Each kernel's first axis indexes the gated units (heads or neurons); the result is
    [len(kernels), units].
    """
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(reduce_retracing=True)
    def gates(features, labels):
        with tf.GradientTape() as tape:
            logits = model(features, training=False)
            loss = loss_fn(labels, tf.cast(logits, tf.float32))
        grads = tape.gradient(loss, kernels)
        return tf.stack([tf.reduce_sum(tf.cast(k, tf.float32) * tf.cast(g, tf.float32),
                                       axis=gate_axes)
                         for k, g in zip(kernels, grads)])

    total, count = None, 0
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("importance scores need (features, labels) batches, found "
                             f"{type(batch).__name__}")
        features, labels = batch
        scores = np.abs(gates(features, labels).numpy())
        total = scores if total is None else total + scores
        count += 1
    if not count:
        raise ValueError("importance scores need at least one (features, labels) batch")
    return total


def head_importance(model: keras.Model, batches: Iterable) -> np.ndarray:
    """Taylor importance of every attention head (see the module docstring).

    Args:
        model: keras.Model. A float classifier built by `models.bert` (logits output).
        batches: iterable of (features, labels): feature dicts of int32 [B, L] arrays,
            int class ids [B]. A few training batches are enough to rank heads.

    Returns:
        float32 [num_layers, num_heads]: higher = removing the head changes the loss more.

    Example:
        >>> scores = head_importance(model, [(features, labels)])
        >>> scores.shape
        (2, 2)
    """
    kernels = [model.get_layer(f"layer_{i}_attention")._output_dense.kernel  # noqa: SLF001
               for i in range(num_transformer_layers(model))]
    return _gate_gradients(model, batches, kernels, gate_axes=(1, 2))


def neuron_importance(model: keras.Model, batches: Iterable) -> np.ndarray:
    """Taylor importance of every FFN intermediate neuron (see the module docstring).

    Args:
        model: keras.Model. A float classifier built by `models.bert` (logits output).
        batches: iterable of (features, labels), as for `head_importance`.

    Returns:
        float32 [num_layers, intermediate_size]: higher = removing the neuron changes
        the loss more.

    Example:
        >>> neuron_importance(model, [(features, labels)]).shape
        (2, 64)
    """
    kernels = [model.get_layer(f"layer_{i}_ffn_out").kernel
               for i in range(num_transformer_layers(model))]
    return _gate_gradients(model, batches, kernels, gate_axes=(1,))


__all__ = ["head_importance", "neuron_importance"]
