"""The training loop on the tiny trained model: a run interrupted mid-epoch and resumed by
a new `Trainer` ends with the weights of a run that was never interrupted, for the
training inside pruning (distillation, perturbed copies and a weight average on) and QAT
(weight average). Fine-tuning is resumed after a real kill -9 in
tests/pipeline/test_finetune.py."""

import dataclasses

import numpy as np
import pytest

from data.input import training_sample
from models import pruning
from models import quantization as quant
from models.artifact import load_model, read_meta
from models.bert import BertArchitecture
from models.pruning_config import PruneConfig
from models.training import TeacherLogits, Trainer
from models.training_config import TrainConfig

# Pruning as the default config trains it: distilled, with perturbed copies; QAT
# without a teacher (the resumed state is the same; the test runs faster).
TRAIN = TrainConfig(epochs=1, batch_size=16, eval_batch_size=64, learning_rate=1e-3,
                    checkpoint_every=4, distill_weight=0.5, augment_fraction=0.5,
                    ema_decay=0.9, bucket_boundaries=(10, 13))  # batches of 3 lengths
QAT_TRAIN = dataclasses.replace(TRAIN, distill_weight=0.0, augment_fraction=0.0)
PRUNE = PruneConfig(final_sparsity=0.75, frequency=2, end_fraction=0.5, train=TRAIN)
CRASH_STEP = 10  # mid-epoch, two steps after the checkpoint of step 8


class Crash(Exception):
    """Stands for the process dying (the Trainer gets no chance to clean up)."""


class CrashAt:
    """A hook that kills training before step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, trainer) -> None:
        if int(trainer.optimizer.iterations.numpy()) == self.step:
            raise Crash


def _train(kind, trained_run, work_dir, crash_at=None, cfg=None, teacher_logits=None):
    """Train like the prune stage (`prune`) or the QAT of the quantize stage (`qat`) into
    `work_dir`; returns (trainer, report), or None when it crashed."""
    source, prep = trained_run / "finetune", trained_run / "prepare"
    hooks = [] if crash_at is None else [CrashAt(crash_at)]
    if kind == "prune":
        def build_model(total_steps):
            schedule = pruning.make_schedule(PRUNE, total_steps)
            return pruning.wrap_for_pruning(load_model(source)[0], schedule, PRUNE.include,
                                            PRUNE.exclude), {}
        hooks.append(pruning.PruningStepHook())
    else:
        def build_model(total_steps):
            calibration = training_sample(prep, 2, TRAIN.batch_size, seed=1)
            return quant.quantize_for_training(load_model(source)[0],
                                               calibration=calibration), {}
    cfg = cfg or (TRAIN if kind == "prune" else QAT_TRAIN)
    trainer = Trainer(cfg, seed=0, prep_dir=prep, work_dir=work_dir,
                      arch=BertArchitecture(**read_meta(source)["architecture"]),
                      build_model=build_model,
                      build_teacher=(lambda: load_model(source)[0]) if cfg.distills else None,
                      hooks=hooks, name=kind, teacher_logits=teacher_logits)
    best_from = pruning.schedule_end_step(pruning.make_schedule(
        PRUNE, trainer.total_steps)) if kind == "prune" else 0
    try:
        return trainer, trainer.fit(best_from_step=best_from)
    except Crash:
        return None


@pytest.mark.parametrize("kind", ["prune", "qat"])
def test_resumed_training_ends_with_the_uninterrupted_weights(kind, trained_run, tmp_path):
    """Dropout masks, perturbed copies, pruning step and masks, fake-quant ranges,
    optimizer, weight average and epoch metrics all continue where they stopped."""
    assert _train(kind, trained_run, tmp_path / "resumed", crash_at=CRASH_STEP) is None
    assert sorted(p.name for p in (tmp_path / "resumed" / "ckpt").glob("*.index")) == \
        ["ckpt-4.index", "ckpt-8.index"]
    resumed, report = _train(kind, trained_run, tmp_path / "resumed")
    assert report["resumed_from_step"] == 8 < report["steps_per_epoch"]
    uninterrupted, expected = _train(kind, trained_run, tmp_path / "uninterrupted")
    assert expected["resumed_from_step"] == 0
    for a, b in zip(resumed.model.get_weights(), uninterrupted.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in report["history"]] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in expected["history"]]
    assert report["weight_average"] == expected["weight_average"]
    # One graph ran every step, whatever the batch shapes (several here) and the order
    # they first came in: with a graph per early shape, a run resumed mid-epoch ran some
    # steps on other graphs, whose fusions round differently (8th-digit differences).
    shapes = {tuple(features["input_ids"].shape) for features, _ in
              uninterrupted.epoch_batches(0, 0)}
    assert len(shapes) > 1
    for trainer in (resumed, uninterrupted):
        assert trainer.train_step.experimental_get_tracing_count() == 1


def test_float32_copy_rebuilds_only_mixed_precision_models():
    """A float32 model (int32 id inputs included) is returned as it is; a bf16 one comes
    back with float32 layers, int32 inputs and the same weights and outputs."""
    import tf_keras as keras
    from tf_keras.src.mixed_precision.policy import policy_scope

    from models.bert import build_classifier
    from models.training import float32_copy

    arch = BertArchitecture(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                            intermediate_size=32, max_positions=16, type_vocab_size=2)
    plain = build_classifier(arch, 2)
    assert float32_copy(plain) is plain
    with policy_scope("mixed_bfloat16"):
        mixed = build_classifier(arch, 2)
    copy = float32_copy(mixed)

    def dtypes(model):
        return {layer.compute_dtype for layer in model.submodules
                if isinstance(layer, keras.layers.Layer) and layer.compute_dtype}

    assert "bfloat16" in dtypes(mixed)
    assert dtypes(copy) == dtypes(plain) == {"float32", "int32"}
    for a, b in zip(copy.get_weights(), mixed.get_weights()):
        np.testing.assert_array_equal(a, b)
    ids = np.array([[2, 7, 9, 3, 0]], np.int32)
    features = {"input_ids": ids, "input_mask": (ids > 0).astype(np.int32),
                "segment_ids": np.zeros_like(ids)}
    np.testing.assert_allclose(copy(features).numpy(), mixed(features).numpy(), atol=0.05)


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_instructions():
    from models.training import cpu_has_bf16, resolve_precision

    plain = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
    bf16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
    amx = "flags\t\t: fpu avx2 amx_tile amx_bf16 amx_int8\n"
    assert not cpu_has_bf16(plain) and cpu_has_bf16(bf16) and cpu_has_bf16(amx)
    assert not cpu_has_bf16("")  # no flags line (not Linux x86): no bf16
    # no GPU in this test process's devices: the CPU decides
    assert resolve_precision("auto", cpuinfo=plain) == "float32"
    assert resolve_precision("auto", cpuinfo=bf16) == "mixed_bfloat16"
    for explicit in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert resolve_precision(explicit, cpuinfo=plain) == explicit


def test_qat_on_replayed_teacher_logits_ends_with_the_weights_of_a_live_teacher(
        trained_run, tmp_path):
    """The quantize stage's QATs share one `TeacherLogits`: the second training on the
    same batches runs no teacher and ends with the very weights of the first, and of a
    training whose step runs the teacher itself (the default quantize QAT before)."""
    cfg = dataclasses.replace(QAT_TRAIN, distill_weight=1.0)  # as the default config
    shared = TeacherLogits()
    live, first = _train("qat", trained_run, tmp_path / "live", cfg=cfg,
                         teacher_logits=shared)
    assert (shared.recorded, shared.replayed) == (live.total_steps, 0)
    replayed, second = _train("qat", trained_run, tmp_path / "replayed", cfg=cfg,
                              teacher_logits=shared)
    assert (shared.recorded, shared.replayed) == (live.total_steps, live.total_steps)
    assert replayed.teacher_step.experimental_get_tracing_count() == 0  # never ran
    in_step, third = _train("qat", trained_run, tmp_path / "in_step", cfg=cfg)
    for a, b, c in zip(live.model.get_weights(), replayed.model.get_weights(),
                       in_step.model.get_weights()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert [h["train_loss"] for h in first["history"]] == \
        [h["train_loss"] for h in second["history"]] == \
        [h["train_loss"] for h in third["history"]]
    # Another batch at the same step is not replayed.
    features = next(iter(live.epoch_batches(0, 0)))[0]
    other = {k: v.numpy()[::-1] for k, v in features.items()}
    assert shared.get(TeacherLogits.key(0, features)) is not None
    assert shared.get(TeacherLogits.key(0, other)) is None
