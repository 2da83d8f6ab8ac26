"""Magnitude pruning of our BERT with tfmot: which layers, which schedule, what it did.

`wrap_for_pruning` clones the model and wraps the selected layers with
`prune_low_magnitude`. Selection is by layer name (regular expressions) among the layers
tfmot can prune: `Dense` (FFN, pooler, classifier), our `BertSelfAttention` (its query,
key, value and output kernels, which sit inside the layer where wrapping `Dense` alone
would miss them) and embeddings. Biases and LayerNorm are never pruned.

Example:
    >>> pruned = wrap_for_pruning(model, make_schedule(cfg, total_steps=1000),
    ...                           include=(".*",), exclude=("embeddings_.*", "classifier"))
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

# The wrapper class is not in tfmot's public API; isinstance needs it.
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (  # noqa: E402
    PruneLowMagnitude,
)

from core.errors import ConfigError
from core.files import gzip_size
from models.bert import BertSelfAttention
from models.pruning_config import PruneConfig

sparsity = tfmot.sparsity.keras


def prunable_weights(layer: keras.layers.Layer) -> list:
    """The kernels tfmot would prune in `layer` ([] if it cannot prune it)."""
    if isinstance(layer, PruneLowMagnitude):
        layer = layer.layer
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    if isinstance(layer, keras.layers.Dense):
        return [layer.kernel]
    if isinstance(layer, keras.layers.Embedding):
        return [layer.embeddings]
    return []


def select_layers(model: keras.Model, include: tuple[str, ...], exclude: tuple[str, ...]
                  ) -> list[str]:
    """Names of the layers to prune: prunable, matching an include and no exclude."""
    chosen = []
    for layer in model.layers:
        if not prunable_weights(layer):
            continue
        if any(re.fullmatch(p, layer.name) for p in include) and \
                not any(re.fullmatch(p, layer.name) for p in exclude):
            chosen.append(layer.name)
    if not chosen:
        raise ConfigError("prune.include/prune.exclude select no prunable layer; prunable "
                          "layers are: " + ", ".join(
                              layer.name for layer in model.layers if prunable_weights(layer)))
    return chosen


def make_schedule(cfg: PruneConfig, total_steps: int, final_sparsity: float | None = None
                  ) -> sparsity.PruningSchedule:
    """The configured schedule, ending at `final_sparsity` (default: cfg.final_sparsity)."""
    final = cfg.final_sparsity if final_sparsity is None else final_sparsity
    if cfg.schedule == "constant":
        return sparsity.ConstantSparsity(final, begin_step=cfg.begin_step,
                                         frequency=cfg.frequency)
    end_step = cfg.end_step or max(cfg.begin_step + 1, int(cfg.end_fraction * total_steps))
    return sparsity.PolynomialDecay(initial_sparsity=min(cfg.initial_sparsity, final),
                                    final_sparsity=final,
                                    begin_step=cfg.begin_step, end_step=end_step,
                                    frequency=cfg.frequency)


def global_allocation(model: keras.Model, names: list[str], target: float,
                      cap: float = 0.95) -> dict[str, float]:
    """Per-layer sparsity from one magnitude threshold over the named layers' kernels.

    Layer l gets the share of its kernel weights whose magnitude is below the threshold t,
    at most `cap`; t is chosen (by bisection) so that `target` of all the weights together
    are below it. Magnitude pruning inside each layer at these sparsities then removes
    about the same weights as one global magnitude cut would.
    """
    if not 0 < target <= cap < 1:
        raise ValueError(f"need 0 < target <= cap < 1, got target {target}, cap {cap}")
    magnitudes = {name: np.sort(np.concatenate([np.abs(w.numpy()).ravel() for w in
                                                prunable_weights(model.get_layer(name))]))
                  for name in names}
    total = sum(m.size for m in magnitudes.values())

    def shares(threshold: float) -> dict[str, float]:
        return {name: min(cap, np.searchsorted(m, threshold) / m.size)
                for name, m in magnitudes.items()}

    def overall(threshold: float) -> float:
        return sum(s * magnitudes[n].size for n, s in shares(threshold).items()) / total

    low, high = 0.0, float(max(m[-1] for m in magnitudes.values())) * 2 + 1e-12
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if overall(middle) < target else (low, middle)
    return {name: round(float(s), 6) for name, s in shares(high).items()}


def schedule_end_step(schedule: sparsity.PruningSchedule) -> int:
    """The step from which the schedule's final sparsity holds."""
    config = schedule.get_config()["config"]
    return int(config.get("end_step") if config.get("end_step", -1) >= 0
               else config.get("begin_step", 0))


def wrap_for_pruning(model: keras.Model,
                     schedule: sparsity.PruningSchedule | Mapping[str, sparsity.PruningSchedule],
                     include: tuple[str, ...], exclude: tuple[str, ...],
                     m_by_n: tuple[int, int] | None = None) -> keras.Model:
    """A clone of `model` whose selected layers are wrapped with `prune_low_magnitude`,
    on `schedule`, or on `schedule[layer name]` if it is a mapping."""
    names = set(select_layers(model, include, exclude))
    schedules = schedule if isinstance(schedule, Mapping) else dict.fromkeys(names, schedule)
    if missing := names - set(schedules):
        raise ValueError(f"no pruning schedule for layers {sorted(missing)}")
    if m_by_n:
        for layer in model.layers:
            if layer.name not in names:
                continue
            for weight in prunable_weights(layer):
                if len(weight.shape) != 2 or weight.shape[0] % m_by_n[1]:  # groups of inputs
                    what = "attention's q/k/v/o kernels are 3-D (hidden, heads, head_size)" \
                        if isinstance(layer, BertSelfAttention) else \
                        f"its kernel has shape {tuple(weight.shape)}"
                    raise ConfigError(
                        f"prune.m_by_n {m_by_n[0]}:{m_by_n[1]} needs 2-D kernels whose input "
                        f"dimension divides by {m_by_n[1]}; layer {layer.name!r}: {what}. "
                        "Exclude it (prune.exclude) or use unstructured sparsity")

    def clone(layer):
        if layer.name in names:
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedules[layer.name],
                                                sparsity_m_by_n=m_by_n)
        return layer  # shared with the source model: its trained weights carry over

    with sparsity.prune_scope():
        return keras.models.clone_model(model, clone_function=clone)


class PruningStepHook:
    """Drives tfmot's `UpdatePruningStep` from our custom training loop: pass it in
    `models.training.Trainer(hooks=[...])`."""

    def on_train_begin(self, trainer) -> None:
        self.callback = sparsity.UpdatePruningStep()
        self.callback.set_model(trainer.model)
        trainer.model.optimizer = trainer.optimizer  # the callback reads its step there
        self.callback.on_train_begin()

    def on_step_begin(self, trainer) -> None:
        self.callback.on_train_batch_begin(batch=-1)

    def on_epoch_end(self, trainer) -> None:
        self.callback.on_epoch_end(batch=-1)  # weights *= masks

    on_weights_changed = on_epoch_end  # averaged weights swapped in: mask them too


def strip(model: keras.Model) -> keras.Model:
    return sparsity.strip_pruning(model)


def kernel_sparsity(model: keras.Model, names: list[str]) -> dict[str, dict[str, Any]]:
    """Measured zero fraction of every prunable kernel of the named layers."""
    out = {}
    for layer in model.layers:
        if layer.name not in names:
            continue
        for weight in prunable_weights(layer):
            values = weight.numpy()
            out[weight.name.split(":")[0]] = {"shape": list(values.shape),
                                              **zero_counts(values)}
    return out


def zero_counts(values: np.ndarray) -> dict[str, Any]:
    """Parameters, zeros and zero fraction (`sparsity`) of an array of weights."""
    zeros = int(np.count_nonzero(values == 0))
    return {"parameters": int(values.size), "zeros": zeros,
            "sparsity": round(zeros / values.size, 6)}


def sparsity_summary(kernels: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Kernel count, per-kernel min/max/mean and the overall zero fraction of all the
    kernels together, from `zero_counts` entries (None for no kernels). Layers pruned to
    different sparsities make the overall figure differ from the mean."""
    if not kernels:
        return None
    values = [k["sparsity"] for k in kernels.values()]
    return {"kernels": len(kernels), "min": min(values), "max": max(values),
            "mean": round(float(np.mean(values)), 6),
            "overall": round(sum(k["zeros"] for k in kernels.values())
                             / sum(k["parameters"] for k in kernels.values()), 6)}


def gzipped_weights_size(model: keras.Model) -> dict[str, int]:
    """Bytes of the model's weights as an h5 file, raw and gzip-compressed (level 6):
    the figure tfmot's pruning guides compare."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.h5"
        model.save_weights(str(path))
        return gzip_size(path)


def parameter_counts(model: keras.Model, names: list[str]) -> dict[str, int]:
    total = int(model.count_params())
    pruned_set = sum(int(np.prod(w.shape)) for layer in model.layers if layer.name in names
                     for w in prunable_weights(layer))
    nonzero = int(sum(np.count_nonzero(w) for w in model.get_weights()))
    return {"total": total, "pruned_set": pruned_set, "nonzero": nonzero}


__all__ = ["PruningStepHook", "global_allocation", "gzipped_weights_size", "kernel_sparsity",
           "make_schedule", "parameter_counts", "prunable_weights", "schedule_end_step",
           "select_layers", "sparsity_summary", "strip", "wrap_for_pruning", "zero_counts"]
