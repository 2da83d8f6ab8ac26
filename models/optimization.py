"""AdamW with linear warmup and linear decay, no weight decay on biases and LayerNorm.

Example:
    >>> optimizer = make_optimizer(peak_lr=5e-5, total_steps=1000, warmup_steps=100,
    ...                            weight_decay=0.01, clip_norm=1.0)
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

# Substrings of variable names that get no weight decay (BERT's recipe).
NO_DECAY = ("bias", "norm", "LayerNorm", "layer_norm")


@keras.saving.register_keras_serializable(package="slimbert")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then linear decay to 0 at
    `total_steps`.

    Args:
        peak: float, the learning rate at the end of warmup.
        total_steps: int, steps until the rate reaches 0.
        warmup_steps: int, steps of linear warmup.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int) -> None:
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = step / max(self.warmup_steps, 1)
        decay = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        factor = tf.where(step < self.warmup_steps, warmup, decay)
        return self.peak * tf.clip_by_value(factor, 0.0, 1.0)

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


def make_optimizer(*, peak_lr: float, total_steps: int, warmup_steps: int,
                   weight_decay: float, clip_norm: float) -> keras.optimizers.Optimizer:
    """AdamW (beta 0.9/0.999, eps 1e-6) on the warmup-decay schedule."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=WarmupLinearDecay(peak_lr, total_steps, warmup_steps),
        weight_decay=weight_decay, beta_1=0.9, beta_2=0.999, epsilon=1e-6,
        global_clipnorm=clip_norm or None)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer


class WeightAverage:
    """Exponential moving average of variables (Polyak averaging), to evaluate and keep.

    Each `update()` moves the average towards the variables by (1 - d), where
    d = min(decay, n / (n + 1)) after n earlier updates: the plain mean of all updates
    until 1 / (1 - decay) of them are in, an exponential average after that. The
    first update copies the variables, so the average starts wherever the caller starts
    updating. `swap()` exchanges the variables' values and the average's (a second call
    undoes it). Build it in the distribution strategy's scope and call both from the
    cross-replica context.

    Args:
        variables: the variables to average (a model's trainable variables).
        decay: float in (0, 1), the long-run decay.
    """

    def __init__(self, variables, decay: float) -> None:
        self.variables = list(variables)
        self.average = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                    name=f"average_{i}")
                        for i, v in enumerate(self.variables)]
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")

        @tf.function
        def update():
            n = tf.cast(self.updates, tf.float32)
            d = tf.minimum(decay, n / (n + 1.0))
            for average, value in zip(self.average, self.variables):
                dv = tf.cast(d, value.dtype)
                average.assign(dv * average + (1 - dv) * value)
            self.updates.assign_add(1)

        @tf.function
        def swap():
            for average, value in zip(self.average, self.variables):
                held = tf.identity(value)
                value.assign(average)
                average.assign(held)

        self.update, self.swap = update, swap

    @property
    def started(self) -> bool:
        return int(self.updates.numpy()) > 0
