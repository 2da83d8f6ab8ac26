"""Knowledge distillation terms: from a teacher's logits and from its hidden states.

A pruned or quantized student learns from the fine-tuned float model (the teacher) as
well as from the labels: `distillation_loss` compares softened output distributions,
`hidden_distillation_loss` the hidden state after every transformer layer, which
`hidden_state_model` exposes as extra outputs. Each returns one loss per example, so
that the training step can weight and average them with the cross-entropy
(`models.training.make_train_step`).
"""

from __future__ import annotations


def distillation_loss(student_logits, teacher_logits, temperature: float):
    """Per-example T^2 * KL(softmax(teacher / T) || softmax(student / T))."""
    import tensorflow as tf

    t = tf.cast(teacher_logits, tf.float32) / temperature
    s = tf.cast(student_logits, tf.float32) / temperature
    kl = tf.reduce_sum(tf.nn.softmax(t) * (tf.nn.log_softmax(t) - tf.nn.log_softmax(s)), -1)
    return kl * temperature * temperature


def hidden_state_model(model):
    """`model` with the hidden state after every transformer layer as extra outputs.

    The layers are found by name (`layer_<i>_ffn_norm`, whatever prefix a tfmot wrapper
    added), so this works on the plain, the pruning-wrapped and the QAT model alike; the
    returned model shares `model`'s layers and variables.
    """
    import re

    import tf_keras as keras

    norms = sorted((layer for layer in model.layers
                    if re.fullmatch(r"(.*_)?layer_\d+_ffn_norm", layer.name)),
                   key=lambda layer: int(re.search(r"layer_(\d+)_ffn_norm", layer.name)[1]))
    if not norms:
        raise ValueError(f"model {model.name!r} has no layer_<i>_ffn_norm layers")

    def output_in_model(layer):
        # A layer that clone_model shared with the source model has one node per model.
        for index, node in enumerate(layer._inbound_nodes):
            if f"{layer.name}_ib-{index}" in model._network_nodes:
                return node.outputs
        raise ValueError(f"layer {layer.name!r} is not connected in {model.name!r}")

    return keras.Model(model.inputs, [model.outputs[0], *map(output_in_model, norms)])


def hidden_distillation_loss(student_states, teacher_states, mask):
    """Per-example mean over layers, real tokens and features of (student - teacher)^2."""
    import tensorflow as tf

    mask = tf.cast(mask, tf.float32)[:, :, None]
    tokens = tf.maximum(tf.reduce_sum(mask, [1, 2]), 1.0)
    total = 0.0
    for s, t in zip(student_states, teacher_states):
        diff = tf.square(tf.cast(s, tf.float32) - tf.cast(tf.stop_gradient(t), tf.float32))
        total += tf.reduce_sum(tf.reduce_mean(diff, -1, keepdims=True) * mask, [1, 2]) / tokens
    return total / len(student_states)


__all__ = ["distillation_loss", "hidden_distillation_loss", "hidden_state_model"]
